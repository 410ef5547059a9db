"""Block manager and scheduler without a model: prefix reuse, preemption, and leak-free invariants."""

import random

from qthink.engine.block_manager import BlockManager
from qthink.engine.sampling_params import SamplingParams
from qthink.engine.scheduler import Scheduler
from qthink.engine.sequence import Sequence, Status


def make_seq(tokens, max_tokens=8, rid="r"):
    return Sequence(rid, 0, tokens, SamplingParams(temperature=0), max_tokens)


def run_step(sched, rng=None):
    """Pretend the model ran: advance, then append a token to every sequence that sampled."""
    batch = sched.schedule()
    sched.advance(batch)
    for seq in batch.seqs:
        if seq.num_computed_tokens == len(seq):
            seq.append(rng.randrange(1000) if rng else 7)
    return batch


def test_prefix_blocks_are_reused():
    bm = BlockManager(num_blocks=16, block_size=4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    shared = list(range(100, 108))  # two full blocks
    first = make_seq(shared + [1, 2, 3])
    sched.add(first)
    run_step(sched)
    second = make_seq(shared + [9, 9])
    sched.add(second)
    batch = run_step(sched)
    assert second.num_cached_tokens == 8
    assert batch.num_tokens[batch.seqs.index(second)] == 2  # only the new tokens ran
    assert second.block_table[:2] == first.block_table[:2]
    assert bm.hits == 2


def test_last_token_is_never_served_from_cache():
    bm = BlockManager(num_blocks=8, block_size=4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    sched.add(make_seq(list(range(8))))
    run_step(sched)
    again = make_seq(list(range(8)))
    sched.add(again)
    run_step(sched)
    assert again.num_cached_tokens == 4  # the block holding the last token is recomputed


def test_chunked_prefill_interleaves_decodes():
    bm = BlockManager(num_blocks=64, block_size=4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=16)
    short = make_seq([1, 2, 3], max_tokens=100)
    sched.add(short)
    run_step(sched)
    long = make_seq(list(range(200, 260)))
    sched.add(long)
    for _ in range(3):
        batch = run_step(sched)
        assert short in batch.seqs and batch.num_tokens[batch.seqs.index(short)] == 1
        assert sum(batch.num_tokens) <= 16
    assert 0 < long.num_computed_tokens < 60


def test_preemption_newest_first_and_recompute():
    bm = BlockManager(num_blocks=6, block_size=4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    old, new = make_seq([1] * 7, rid="old"), make_seq([2] * 7, rid="new")
    sched.add(old)
    sched.add(new)
    for _ in range(12):
        run_step(sched)
    assert sched.num_preemptions >= 1
    assert old.num_output_tokens >= new.num_output_tokens


def test_random_operations_leave_every_block_free():
    rng = random.Random(0)
    bm = BlockManager(num_blocks=40, block_size=4)
    sched = Scheduler(bm, max_num_seqs=6, max_num_batched_tokens=32)
    live: list[Sequence] = []
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(1, 30))] for _ in range(5)]
    for op in range(3000):
        r = rng.random()
        if r < 0.15:
            tokens = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(1, 12))]
            seq = make_seq(tokens, max_tokens=rng.randrange(1, 20), rid=str(op))
            sched.add(seq)
            live.append(seq)
        elif r < 0.22 and live:
            sched.finish(live.pop(rng.randrange(len(live))), "abort")
        else:
            run_step(sched, rng)
            for seq in [s for s in live if s.num_output_tokens >= s.max_tokens]:
                sched.finish(seq, "length")
                live.remove(seq)
        used = {b for s in sched.running for b in s.block_table}
        assert all(bm.blocks[b].ref_count > 0 for b in used)
        assert bm.num_free_blocks + len({b.block_id for b in bm.blocks if b.ref_count}) == 40
    for seq in live:
        sched.finish(seq, "abort")
    assert bm.num_free_blocks == 40
    assert all(b.ref_count == 0 for b in bm.blocks)
    assert not sched.running and not sched.waiting
    assert all(s.status is Status.FINISHED for s in live)


def test_random_operations_with_speculation_leave_every_block_free():
    """Decoding sequences draft up to 4 tokens; a random prefix of each draft is accepted and
    the rest rolled back. Blocks never leak, and every keyed block holds committed tokens."""
    rng = random.Random(1)
    bm = BlockManager(num_blocks=40, block_size=4)
    sched = Scheduler(bm, max_num_seqs=6, max_num_batched_tokens=24)
    live: list[Sequence] = []
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(1, 30))] for _ in range(5)]
    for op in range(3000):
        r = rng.random()
        if r < 0.15:
            tokens = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(1, 12))]
            seq = make_seq(tokens, max_tokens=rng.randrange(1, 30), rid=str(op))
            sched.add(seq)
            live.append(seq)
        elif r < 0.22 and live:
            sched.finish(live.pop(rng.randrange(len(live))), "abort")
        else:
            for seq in sched.running:
                if seq.num_pending_tokens == 1:
                    seq.draft_ids = [rng.randrange(50) for _ in range(rng.randrange(5))]
            batch = sched.schedule()
            drafts = {s: (s.draft_ids, len(s)) for s in batch.seqs if s.draft_ids}
            sched.advance(batch)
            for seq in batch.seqs:
                if seq.num_computed_tokens == len(seq):
                    drafted = drafts.get(seq, ([], 0))[0]
                    accepted = drafted[: rng.randrange(len(drafted) + 1)]
                    for t in accepted + [rng.randrange(50)]:
                        seq.append(t)
                seq.draft_ids = []
            for seq, (drafted, start) in drafts.items():
                sched.commit_drafts(seq, drafted, start)
            for seq in [s for s in live if s.num_output_tokens >= s.max_tokens]:
                sched.finish(seq, "length")
                live.remove(seq)
        for seq in sched.running:
            assert seq.num_computed_tokens <= len(seq)
            assert len(seq.block_table) == -(-seq.num_computed_tokens // 4)  # rejected slots freed
            for i, block_id in enumerate(seq.block_table[: seq.num_computed_tokens // 4]):
                block = bm.blocks[block_id]
                assert block.hash is None or block.token_ids == tuple(seq.token_ids[i * 4 : (i + 1) * 4])
        assert bm.num_free_blocks + len({b.block_id for b in bm.blocks if b.ref_count}) == 40
    for seq in live:
        sched.finish(seq, "abort")
    assert bm.num_free_blocks == 40
    assert all(b.ref_count == 0 for b in bm.blocks)


def test_a_sequence_whose_grammar_compiles_is_held_back_and_the_rest_run():
    bm = BlockManager(num_blocks=16, block_size=4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    pending, free = make_seq([1, 2, 3], rid="grammar"), make_seq([4, 5, 6], rid="free")
    pending.grammar_pending = True
    sched.add(pending)
    sched.add(free)
    assert sched.has_runnable()
    for _ in range(3):
        assert run_step(sched).seqs == [free]
    assert pending.status is Status.WAITING and not pending.block_table
    pending.grammar_pending = False  # compiled: it joins the running batch
    assert pending in run_step(sched).seqs
    alone = Scheduler(BlockManager(num_blocks=4, block_size=4), 4, 64)
    held = make_seq([1, 2])
    held.grammar_pending = True
    alone.add(held)
    assert alone.has_work() and not alone.has_runnable() and not alone.schedule()
