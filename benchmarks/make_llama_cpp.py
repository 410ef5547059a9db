"""Build llama.cpp's benchmark tools and the GGUF files (BF16, Q8_0, Q4_K_M) of a checkpoint, once.

    python benchmarks/make_llama_cpp.py /data/qwen3-4b-random /data/llama

llama.cpp comes from the sources vendored in the llama-cpp-python sdist on PyPI (the only
registry these machines reach). It is built for AVX-512 BF16/VNNI with AMX off: the AMX
matmul of that build crashes on these virtual machines. Everything lands in OUT, outside git.
"""

import subprocess
import sys
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DGGML_NATIVE=OFF",
    *(f"-DGGML_{isa}=ON" for isa in ("AVX", "AVX2", "FMA", "F16C", "BMI2", "AVX512")),
    *(f"-DGGML_AVX512_{ext}=ON" for ext in ("VBMI", "VNNI", "BF16")),
    *(f"-DGGML_AMX_{ext}=OFF" for ext in ("TILE", "INT8", "BF16")),
]
TOOLS = ["llama-bench", "llama-batched-bench", "llama-quantize"]
QUANTS = {"Q8_0": "q8_0", "Q4_K_M": "q4_k_m"}


def sh(*cmd, **kw) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), check=True, **kw)


def source_tree(out: Path) -> Path:
    tree = next(out.glob("llama_cpp_python-*/vendor/llama.cpp"), None)
    if tree is None:
        sh(sys.executable, "-m", "pip", "download", SDIST, "--no-deps", "--no-binary", ":all:", "-d", out)
        archive = next(out.glob("llama_cpp_python-*.tar.gz"))
        sh("tar", "xzf", archive, "-C", out)
        tree = next(out.glob("llama_cpp_python-*/vendor/llama.cpp"))
    return tree


def build(tree: Path) -> Path:
    bin_dir = tree / "build" / "bin"
    if not all((bin_dir / tool).is_file() for tool in TOOLS):
        sh("cmake", "-S", tree, "-B", tree / "build", *CMAKE_FLAGS)
        sh("cmake", "--build", tree / "build", "-j2", "--target", *TOOLS)
    return bin_dir


def convert(tree: Path, bin_dir: Path, checkpoint: Path, out: Path) -> dict[str, Path]:
    files = {"BF16": out / f"{checkpoint.name}-bf16.gguf"}
    if not files["BF16"].is_file():
        sh(sys.executable, "-m", "pip", "install", "-q", "sentencepiece")  # the converter imports it
        converter = tree / "convert_hf_to_gguf.py"
        sh(sys.executable, converter, checkpoint, "--outtype", "bf16", "--outfile", files["BF16"])
    for name, suffix in QUANTS.items():
        files[name] = out / f"{checkpoint.name}-{suffix}.gguf"
        if not files[name].is_file():
            sh(bin_dir / "llama-quantize", files["BF16"], files[name], name, 2)
    return files


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    checkpoint, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tree = source_tree(out)
    bin_dir = build(tree)
    for name, path in convert(tree, bin_dir, checkpoint, out).items():
        print(f"{name:7s} {path}")
    print(f"tools   {bin_dir}")


if __name__ == "__main__":
    main()
