"""Resuming: a fine-tuning run killed (SIGKILL) in the middle of an epoch, then resumed, ends with
exactly the weights and scores of an uninterrupted run with the same seed; the kill leaves no
output behind, only the state of its last finished epoch. A run is repeatable, and resuming with
other settings is refused with a message naming them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from finetune_data import perturbed_student, subset_coco

import samkit
from samkit import SamkitError

# one prompt iteration: what resuming must restore (weights, optimiser state, the epoch's seeded
# draws, the scores so far) is the same for any count, and each further iteration costs a whole
# decoder pass more per step; the correction iterations are trained in test_finetune_training.py
SETTINGS = dict(epochs=2, batch_size=4, prompt_iterations=1, lr=3e-4, seed=11, progress=False)


@pytest.fixture(scope="module")
def small_run(kampala_teacher, mobile_sam_checkpoint, tmp_path_factory):
    """Three training chips with three objects each (3 steps per epoch), one validation chip."""
    root = tmp_path_factory.mktemp("resume")
    return {
        "root": root,
        "student": perturbed_student(mobile_sam_checkpoint, root / "student.pt"),
        "train": subset_coco(kampala_teacher.coco, root / "train.json", [3, 5, 6], max_objects=3),
        "val": subset_coco(kampala_teacher.coco, root / "val.json", [8], max_objects=3),
        "embeddings": kampala_teacher.embeddings,
    }


def run(small_run, output, **extra):
    return samkit.finetune(small_run["student"], small_run["train"], output, small_run["val"],
                           cache_dir=small_run["embeddings"], **{**SETTINGS, **extra})


def run_in_child(small_run, output, kill_at: tuple[int, int] | None = None,
                 resume: bool = False) -> subprocess.CompletedProcess:
    """Run the same fine-tuning in a fresh single-threaded child process, which prints each step's
    (epoch, step) as a line `step E S` and, with `kill_at=(epoch, step)`, SIGKILLs itself after it.

    Every run the resume test compares happens in a fresh process: with several threads, or after
    other tests in the same process, MKL's float sums may differ in the last bits (they depend on
    thread count and memory alignment), and AdamW turns last-bit noise in near-zero gradients (a
    key projection's bias, to which softmax is blind) into full-size steps."""
    script = textwrap.dedent(f"""
        import os, signal, samkit

        def callback(progress):
            print("step", progress.epoch, progress.step, flush=True)
            if (progress.epoch, progress.step) == {kill_at!r}:
                os.kill(os.getpid(), signal.SIGKILL)

        samkit.finetune({str(small_run['student'])!r}, {str(small_run['train'])!r}, {str(output)!r},
                        {str(small_run['val'])!r}, cache_dir={str(small_run['embeddings'])!r}, callback=callback,
                        resume={resume!r}, **{SETTINGS!r})
    """)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800, env=env)


def steps_of(child: subprocess.CompletedProcess) -> list[tuple[int, int]]:
    return [(int(e), int(s)) for _, e, s in (line.split() for line in child.stdout.splitlines()
                                              if line.startswith("step "))]


def kill_mid_epoch(small_run, output, epoch: int, step: int) -> subprocess.CompletedProcess:
    """Run the same fine-tuning in a child process that SIGKILLs itself after `step` of `epoch`."""
    return run_in_child(small_run, output, kill_at=(epoch, step))


def test_killed_run_resumes_to_the_uninterrupted_result(small_run):
    whole_output = small_run["root"] / "whole.pt"
    whole = run_in_child(small_run, whole_output)
    assert whole.returncode == 0, whole.stderr[-2000:]
    steps = steps_of(whole)
    assert (2, 3) in steps and (2, 4) not in steps  # 9 objects, batches of 4: 3 steps per epoch

    output = small_run["root"] / "resumed.pt"
    child = kill_mid_epoch(small_run, output, epoch=2, step=2)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    # killed: no output, nothing half-written beside it; the state of epoch 1 waits in the work folder
    work = output.with_name("resumed.finetune")
    assert not output.exists() and not output.with_suffix(".json").exists()
    assert not [p for p in small_run["root"].iterdir() if ".tmp-" in p.name]
    state = torch.load(work / "state.pt", map_location="cpu", weights_only=True)
    assert [r["epoch"] for r in json.loads(state["history"])] == [0, 1]

    resumed = run_in_child(small_run, output, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert steps_of(resumed)[0] == (2, 1)  # epoch 1 was not trained again
    a = torch.load(whole_output, map_location="cpu", weights_only=True)
    b = torch.load(output, map_location="cpu", weights_only=True)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    base = torch.load(small_run["student"], map_location="cpu", weights_only=True)
    assert [k for k in a if not torch.equal(a[k], base[k])], "training changed no weight: the comparison proves nothing"

    def scores(meta):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in meta["epochs"]]

    whole_meta, resumed_meta = (json.loads(p.with_suffix(".json").read_text()) for p in (whole_output, output))
    assert scores(whole_meta) == scores(resumed_meta)
    assert resumed_meta["validation"]["best_epoch"] == whole_meta["validation"]["best_epoch"]
    assert not work.exists()  # finished: the work folder is gone


def test_runs_repeat_and_seeds_matter(small_run):
    first = run(small_run, small_run["root"] / "a.pt", epochs=1)
    again = run(small_run, small_run["root"] / "b.pt", epochs=1)
    other = run(small_run, small_run["root"] / "c.pt", epochs=1, seed=12)
    a, b, c = (torch.load(r.checkpoint, map_location="cpu", weights_only=True) for r in (first, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_resume_with_other_settings_is_refused(small_run):
    output = small_run["root"] / "refused.pt"
    child = kill_mid_epoch(small_run, output, epoch=2, step=1)
    assert child.returncode == -signal.SIGKILL
    with pytest.raises(SamkitError, match=r"started with other settings \(lr 0.0003 then, 0.001 now\)"):
        run(small_run, output, resume=True, lr=1e-3)
    # resumed with more epochs it goes on, from epoch 2
    steps = []
    result = run(small_run, output, resume=True, epochs=3, callback=lambda p: steps.append(p.epoch))
    assert min(steps) == 2 and [r["epoch"] for r in result.history] == [0, 1, 2, 3]


def test_bfloat16_run(small_run, kampala_teacher, tmp_path):
    """dtype="bfloat16": the encoder embeds and the decoder trains under bf16 autocast; the
    checkpoint keeps the base file's float32 tensors, and the run records its precision."""
    train = subset_coco(kampala_teacher.coco, tmp_path / "one.json", [4], max_objects=2)
    result = samkit.finetune(small_run["student"], train, tmp_path / "bf16.pt", epochs=1, val_fraction=0,
                             prompt_iterations=1, dtype="bfloat16", cache_dir=tmp_path / "emb", progress=False)
    saved = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    base = torch.load(small_run["student"], map_location="cpu", weights_only=True)
    assert all(saved[k].dtype == base[k].dtype for k in base)
    assert any(not torch.equal(saved[k], base[k]) for k in base if k.startswith("mask_decoder."))
    assert json.loads(result.metadata.read_text())["settings"]["dtype"] == "bfloat16"
    assert result.history[1]["loss"] > 0
