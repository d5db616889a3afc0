"""The int8 emulation (what a CUDA campaign runs) against torch.ao's fbgemm kernels, fault by fault, on the CPU.

The suite's ResNet-20 (ResNet20.th) and the digits smallnet of the tests, each quantized (torch.ao, fbgemm)
with its images as the calibration set; ``--faults`` weight faults (int8 codes, per-channel scales, float32
biases, every bit, bit flips and stuck-at) and as many activation faults (uint8 codes), the same fault on the
fbgemm model (naive engine: the full forward of torch.ao's kernels) and on the emulated model (cached engine).
Prints how many faults give a different output (bits) and the faults/s of each. Asserts nothing.

    PYTHONPATH=. python tests/bench/bench_int8_emulation.py [--faults 150] [--seed 11]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults", type=int, default=150, help="weight faults (and as many activation faults)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--images", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from diehardlab.hardening.sfi import bits
    from diehardlab.hardening.sfi.engine import Images, Injector

    from tests.sfi import test_sfi_formats as t

    for which in ("resnet20", "digits"):
        model, x = t.resnet20.__wrapped__() if which == "resnet20" else t.digits.__wrapped__()
        ao = t._int8(model, x)
        emu = t.emulate_int8(ao, x)
        n = args.images
        images = Images(x[:n], torch.full((n,), -1), [str(i) for i in range(n)])
        ref = Injector(ao, images, batch_size=n, engine="naive")
        got = Injector(emu, images, batch_size=n)
        got._cache(0)
        faults = t._faults(ao, x, args.faults, seed=args.seed)
        bad, changed, secs = 0, 0, {"fbgemm": 0.0, "emulated": 0.0}
        for f in faults:
            t0 = time.perf_counter()
            a = ref._one(f, 0)
            t1 = time.perf_counter()
            b = got._one(f, 0)
            secs["fbgemm"] += t1 - t0
            secs["emulated"] += time.perf_counter() - t1
            a = ref.golden[0] if a is None else a
            b = got.golden[0] if b is None else b
            bad += not bits.bits_equal(a, b)
            changed += not bits.bits_equal(a, ref.golden[0])
        kinds = sorted({f.tensor.rsplit(".", 1)[1] for f in faults})
        print(
            f"{which}: {len(faults)} faults ({', '.join(kinds)}) x {n} images: {bad} give a different output "
            f"(emulation vs fbgemm), {changed} change the output; fbgemm naive {len(faults) / secs['fbgemm']:.1f} "
            f"faults/s, emulation cached {len(faults) / secs['emulated']:.1f} faults/s"
        )


if __name__ == "__main__":
    main()
