"""srgnn.memory: a training step at 40,000 items reuses freed memory instead of faulting new pages."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # training steps at 40,000 items in subprocesses

STEPS = """
import json, resource, sys, torch
sys.path.insert(0, {root!r})
from srgnn.data import Batch
from srgnn.memory import keep_freed_memory
from srgnn.model import SRGNN, ModelConfig
from srgnn.optim import make_optimizer
from srgnn.train import TrainStep
applied = keep_freed_memory() if {keep} else False
torch.manual_seed(0)
torch.set_num_threads(1)
n_items, B, L = 40000, 100, 10
model = SRGNN(ModelConfig(n_items=n_items, hidden_size=100, max_len=L))
opt = make_optimizer(model.parameters(), lr=1e-3, l2=1e-5)
lengths = torch.randint(1, L + 1, (B,))
items = torch.randint(1, n_items + 1, (B, L)) * (torch.arange(L) < lengths.unsqueeze(1))
batch = Batch(items=items, lengths=lengths, targets=torch.randint(1, n_items + 1, (B,)))
step = TrainStep(model, opt)
for _ in range(5):
    step(batch, 1 / B)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step(batch, 1 / B)
print(json.dumps({{"applied": applied,
                  "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10}}))
"""


def _faults(keep: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS.format(root=str(ROOT), keep=keep)], check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_training_steps_at_40k_items_fault_no_pages_once_freed_memory_is_kept():
    kept, plain = _faults(True), _faults(False)
    # each step allocates and frees ~16 MB blocks ([B, n_items] scores, [n_items, d] gradients):
    # ~4,000 pages each when they are mmap'd and unmapped per step
    print(f"page faults per step: {plain['faults_per_step']:.0f} by default, {kept['faults_per_step']:.0f} kept")
    assert kept["applied"] is True
    assert kept["faults_per_step"] < 2_000, kept
