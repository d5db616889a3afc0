"""The runner on this machine's accelerator (CUDA when present): golden, 5 s of the loop under a simulated beam.

Prints the device, the golden's run-to-run difference, the ECC state the runner found, and what the log and the
truth file say (every output-changing event must be an #SDC). Meant for a GPU machine; runs on CPU too.

    PYTHONPATH=. python tests/bench/bench_harness_device.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from diehardlab.hardening.checkpoint import load_model, save_config, save_model
from diehardlab.hardening.models import ModelConfig, build_model
from diehardlab.harness.device import pick_device
from diehardlab.harness.golden import golden_record, save_golden
from diehardlab.harness.runner import Runner, RunOptions
from diehardlab.harness.simulator import BeamSimulation

from diehardlab.formats.parser import summarize

SPEC = "seed = 1\n[beam]\nflux_n_cm2_s = 1e6\nflux_factor = 1e5\n[cross_section_cm2]\ncorrupt = 5e-6\nnan = 1e-6\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args()
    d = Path(tempfile.mkdtemp())
    cfg = ModelConfig(arch="resnet20")
    torch.manual_seed(0)
    save_config(d / "ck", {"model": cfg.to_dict(), "dataset": "cifar10", "in_channels": 3, "num_classes": 10})
    save_model(d / "ck", build_model(cfg, 3, 10).eval())
    dev = pick_device("auto")
    loaded = load_model(d / "ck", dev)
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    rec = golden_record(loaded, x, torch.zeros(64, dtype=torch.long), 32, 1e-3, dev)
    save_golden(rec, d / "g.pt")
    print(f"golden on {rec['device_name']}: run-to-run difference {rec['max_run_difference']:.3e}")
    (d / "s.toml").write_text(SPEC)
    opts = RunOptions(ckpt_dir=d / "ck", golden=d / "g.pt", log_dir=d / "logs", hostname="dev", benchmark="r20")
    opts.duration_s, opts.interval, opts.double_error_kill = a.seconds, 100, False
    r = Runner(opts, BeamSimulation.from_file(d / "s.toml"))
    r.prepare()
    r.run()
    log = sorted((d / "logs").glob("*.log"))[0]
    s = summarize(log)
    truth = json.loads(Path(str(log) + ".truth.json").read_text())
    changed = [e for e in truth["events"] if e["observed"] == "sdc"]
    ites = {e.iteration for e in s.sdc}
    print(f"log {log.name}: ecc {r.ecc}")
    print(
        f"iterations {s.last_iteration} kernel {truth['kernel_time_s']:.2f} s, #SDC {s.sdc_count} "
        f"(critical {s.critical_sdc}), truth output-changing events {len(changed)}, "
        f"all of them in the log: {all(e['sdc_ite'] in ites for e in changed)}"
    )


if __name__ == "__main__":
    main()
