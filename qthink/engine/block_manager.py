"""BlockManager: the paged KV cache's blocks, reference counts and hash-keyed prefix cache."""

from collections import OrderedDict

from qthink.engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] = ()


class BlockManager:
    """Blocks of `block_size` token slots. A full block is keyed by hash(parent hash, its tokens)
    so that later sequences with the same prefix reuse it; freed blocks keep their key and are
    evicted least recently used, only when no unkeyed free block is left."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.prefix_caching = enable_prefix_caching
        self.hash_to_block: dict[int, int] = {}
        self.free_plain: list[int] = list(range(num_blocks - 1, -1, -1))  # stack, unkeyed
        self.free_cached: OrderedDict[int, None] = OrderedDict()  # keyed, LRU first
        self.queries = 0  # full prompt blocks looked up
        self.hits = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_plain) + len(self.free_cached)

    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        total = seq.num_computed_tokens + num_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def reuse_prefix(self, seq: Sequence) -> None:
        """Point a new sequence's table at cached blocks of its prefix. The last token is
        always recomputed, since its logits are needed to sample."""
        assert not seq.block_table
        if not self.prefix_caching:
            return
        parent = None
        for start in range(0, len(seq) - 1 - self.block_size + 1, self.block_size):
            tokens = tuple(seq.token_ids[start : start + self.block_size])
            key = hash((parent, tokens))
            self.queries += 1
            block_id = self.hash_to_block.get(key)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            self.hits += 1
            self._take(block_id)
            seq.block_table.append(block_id)
            parent = key
        seq.num_computed_tokens = seq.num_cached_tokens = len(seq.block_table) * self.block_size

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= self.num_free_blocks

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Give `seq` the blocks for its next `num_tokens` tokens (call can_grow first)."""
        for _ in range(self.blocks_needed(seq, num_tokens)):
            seq.block_table.append(self._take(self._pop_free()))

    def register_full_blocks(self, seq: Sequence) -> None:
        """Key the sequence's newly computed full blocks so later requests can reuse them."""
        if not self.prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        parent = None
        for i in range(full):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
                block.hash, block.token_ids = hash((parent, tokens)), tokens
                self.hash_to_block.setdefault(block.hash, block.block_id)
            parent = block.hash

    def truncate(self, seq: Sequence) -> None:
        """Free the blocks past the sequence's computed tokens (slots of rejected drafts)."""
        keep = -(-seq.num_computed_tokens // self.block_size)
        extra, seq.block_table = seq.block_table[keep:], seq.block_table[:keep]
        for block_id in reversed(extra):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._forget(block)
                self.free_plain.append(block_id)

    def free(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.hash is not None and self.hash_to_block.get(block.hash) == block_id:
                    self.free_cached[block_id] = None
                else:
                    self._forget(block)
                    self.free_plain.append(block_id)
        seq.block_table = []

    def _pop_free(self) -> int:
        if self.free_plain:
            return self.free_plain.pop()
        block_id, _ = self.free_cached.popitem(last=False)
        self._forget(self.blocks[block_id])
        return block_id

    def _take(self, block_id: int) -> int:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            self.free_cached.pop(block_id, None)
        block.ref_count += 1
        return block_id

    def _forget(self, block: Block) -> None:
        if block.hash is not None and self.hash_to_block.get(block.hash) == block.block_id:
            del self.hash_to_block[block.hash]
        block.hash, block.token_ids = None, ()
