"""Training on several processes (torchrun, gloo on the CPU) against one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.build import load_data, prepare_splits
from pyro_vae.distributed import World, check_shards, rank_seed, shard_bounds, world_from_env
from pyro_vae.errors import ConfigError
from pyro_vae.infer import DeviceTrace_ELBO, estimate
from pyro_vae.infer.ais import ais_log_likelihood, latent_rows, reverse_ais_log_likelihood
from pyro_vae.infer.driver import by_blocks, joined, run_blocks
from pyro_vae.infer.estimators import ESTIMATORS, settings_for
from pyro_vae.infer.latent import LatentSpace
from pyro_vae.infer.optim import JointAdam
from pyro_vae.jobs.loading import load_run
from pyro_vae.runs import RunDir
from tests.distributed_setup import BATCH, EPOCHS, SEED, N, data, fresh_vae, transform

ROOT = Path(__file__).resolve().parents[1]
RANK_THREADS = 1  # every launched rank runs with OMP_NUM_THREADS=1 (_launch)


@pytest.fixture(autouse=True)
def _threads_of_a_rank():
    """This process computes its references with the ranks' thread count: on some CPUs a
    matrix product's float sums, and so a "bit for bit" comparison, depend on it (AIS's
    gradients differed in the 7th digit with 2 threads against the ranks' 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(RANK_THREADS)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("batch, size", [(15, 2), (16, 2), (7, 3), (5, 5), (128, 8)])
def test_shards_cover_a_minibatch_once_and_differ_by_at_most_one_row(batch, size):
    bounds = [shard_bounds(batch, World(rank=r, size=size)) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == batch
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_a_minibatch_smaller_than_the_world_is_refused():
    check_shards(50, 15, World(0, 2))  # the last minibatch of 5 still splits
    with pytest.raises(ConfigError, match="a minibatch of 1 datapoints cannot be split among 2"):
        check_shards(31, 15, World(0, 2))  # 15, 15, 1
    with pytest.raises(ConfigError, match="among 4 processes"):
        check_shards(100, 3, World(0, 4))


def test_the_world_is_read_from_torchruns_variables():
    assert world_from_env({}) == World()
    assert world_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == World(1, 2, 1)
    with pytest.raises(ConfigError, match="not a valid launch"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="must be integers"):
        world_from_env({"WORLD_SIZE": "two"})


def test_each_rank_and_epoch_gets_its_own_stream():
    seeds = {rank_seed(SEED, r, e) for r in range(4) for e in range(4)}
    assert len(seeds) == 16 and rank_seed(SEED, 1, 2) == rank_seed(SEED, 1, 2)


def _single_process_reference(world_size: int) -> dict[str, torch.Tensor]:
    """What the ranks compute, in one process: the same minibatches, each rank's shard scored
    with that rank's stream, the shards' losses weighted b_r / B and summed before one step."""
    vae = fresh_vae()
    x, _ = data()
    elbo = DeviceTrace_ELBO(max_plate_nesting=1)
    optim = JointAdam({"lr": 0.05})
    with pyro.validation_enabled(False):
        for epoch in range(EPOCHS):
            states = []
            for r in range(world_size):
                pyro.set_rng_seed(rank_seed(SEED, r, epoch))
                if r == 0:
                    perm = torch.randperm(N)
                states.append(torch.get_rng_state())
            for i in range(0, N, BATCH):
                index = perm[i : i + BATCH]
                with poutine.trace(param_only=True) as capture:
                    total = 0.0
                    for r in range(world_size):
                        torch.set_rng_state(states[r])
                        lo, hi = shard_bounds(index.shape[0], World(r, world_size))
                        shard = index[lo:hi]
                        loss = elbo.differentiable_loss(
                            vae.model, vae.guide, transform(x[shard]), index=shard, num_data=N
                        )
                        total = total + loss * (hi - lo) / index.shape[0]
                        states[r] = torch.get_rng_state()
                    total.backward()
                params = {s["value"].unconstrained() for s in capture.trace.nodes.values()}
                optim(params)
                for p in params:
                    p.grad = None
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def test_two_ranks_train_as_one_process_on_the_same_minibatches(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(RANK_THREADS)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*launch, str(ROOT / "tests" / "distributed_worker.py"), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, p in ranks[0]["params"].items():
        assert torch.equal(p, ranks[1]["params"][name]), name  # ranks identical, bit for bit
    assert ranks[0]["objectives"] == ranks[1]["objectives"]
    assert ranks[0]["val"] == ranks[1]["val"]
    reference = _single_process_reference(world_size=2)
    trained = False
    for name, p in ranks[0]["params"].items():
        assert p.dtype == torch.float64
        torch.testing.assert_close(p, reference[name], rtol=0, atol=1e-12, msg=name)
        trained |= not torch.equal(p, fresh_vae().state_dict()[name])
    assert trained  # the steps moved the parameters


def _launch(*args, cwd, processes: int = 2):
    """``torchrun --standalone --nproc_per_node=PROCESSES -m pyro_vae ARGS`` on gloo."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(RANK_THREADS)}
    env.pop("RANK", None)
    nodes = f"--nproc_per_node={processes}"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", nodes]
    return subprocess.run(
        [*launch, "-m", "pyro_vae", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_cli_trains_resumes_exactly_and_writes_once_from_rank_0(tmp_path):
    tiny = ("train", "--hidden", "16", "--latent-dim", "2", "--batch-size", "64", "--no-progress")
    whole = _launch(*tiny, "--epochs", "3", "--no-eval", "--out", tmp_path / "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = _launch(*tiny, "--epochs", "2", "--no-eval", "--out", tmp_path / "split", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("epoch    2/2") == 1 and first.stdout.count("run directory:") == 1
    resumed = _launch(
        *tiny,
        "--epochs",
        "3",
        "--eval-samples",
        "25",
        "--out",
        tmp_path / "split",
        "--resume",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("digits (test split") == 1  # rank 0 alone prints
    (final,) = RunDir(tmp_path / "split").select_evaluations(num_samples=25)
    assert final.evaluation.processes == 2  # the ranks shared the final evaluation
    a, b = (
        torch.load(tmp_path / r / "checkpoint.pt", weights_only=True) for r in ("whole", "split")
    )
    assert a["epoch"] == b["epoch"] == 3
    for name, p in a["model"].items():
        assert torch.equal(p, b["model"][name]), name  # the resumed launch equals the whole one
    files = sorted(p.name for p in (tmp_path / "split").iterdir())
    assert files == [".lock", "checkpoint.pt", "config.json", "evaluations", "metrics.csv"]
    assert len((tmp_path / "split" / "metrics.csv").read_text().splitlines()) == 4  # 3 epochs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split", "whole"]
    # the run is an ordinary run: one process evaluates it
    from pyro_vae.cli import main

    assert main(["evaluate", str(tmp_path / "split"), "--num-samples", "30", "--no-progress"]) == 0
    # two processes evaluate it in seeded blocks: bit for bit what one process computes block
    # by block, whatever the number of processes
    sharded = _launch(
        "evaluate", tmp_path / "split", "--num-samples", "40", "--no-progress", cwd=tmp_path
    )
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert sharded.stdout.count("wrote ") == 1
    (stored,) = RunDir(tmp_path / "split").select_evaluations(num_samples=40)
    assert stored.evaluation.processes == 2
    config, vae, _ = load_run(tmp_path / "split", "cpu")
    x = prepare_splits(config, load_data(config), vae.likelihood, ("test",), fixed=True)["test"]
    seed = config.train.seed
    alone = estimate(vae.model, vae.guide, x, "iwae", seed=seed, num_samples=40)
    per_point = stored.per_point()
    assert torch.equal(per_point.log_px, alone.log_px)
    assert torch.equal(per_point.stderr, alone.stderr)
    iwae, settings = ESTIMATORS["iwae"], settings_for("iwae", num_samples=40)
    blocks = run_blocks(iwae, settings, vae.model, vae.guide, x, seed=seed)
    some = run_blocks(iwae, settings, vae.model, vae.guide, x, seed=seed, blocks=[3, 1])
    assert all(torch.equal(some[b].log_px, blocks[b].log_px) for b in (1, 3))
    # AIS too: its pilot run and chains per block, from the block's stream
    ais = ("--method", "ais", "--ais-steps", "5", "--ais-chains", "4", "--ais-leapfrog", "2")
    shared = _launch("evaluate", tmp_path / "split", *ais, "--no-progress", cwd=tmp_path)
    assert shared.returncode == 0, shared.stderr[-3000:]
    (stored,) = RunDir(tmp_path / "split").select_evaluations(method="ais")
    alone = estimate(vae.model, vae.guide, x, "ais", seed=seed, **AIS_SETTINGS)
    assert stored.evaluation.processes == 2
    assert torch.equal(stored.per_point().log_px, alone.log_px)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A tiny run trained by one process, and its test split."""
    from pyro_vae.cli import main

    run = tmp_path_factory.mktemp("shared") / "run"
    tiny = ("--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--no-eval", "--no-progress")
    assert main(["train", *tiny, "--out", str(run)]) == 0
    config, vae, _ = load_run(run, "cpu")
    x = prepare_splits(config, load_data(config), vae.likelihood, ("test",), fixed=True)["test"]
    return run, vae, x, config.train.seed


REFINE = ("--num-samples", "30", "--refine-steps", "50")
AIS = ("--ais-steps", "5", "--ais-chains", "4", "--ais-leapfrog", "2")
AIS_SETTINGS = {"ais_steps": 5, "ais_chains": 4, "ais_leapfrog": 2}
AIS_KEYWORDS = {"num_steps": 5, "num_chains": 4, "num_leapfrog": 2}
SMC = ("--smc-particles", "8", "--smc-replicates", "2")
SMC_SETTINGS = {"smc_particles": 8, "smc_replicates": 2}


# Every estimator of the table, with settings that keep it quick and reach its every stage.
LAUNCHED_METHODS = {
    "iwae": (("--num-samples", "30"), {"num_samples": 30}),
    "refined": (REFINE, {"num_samples": 30, "refine_steps": 50}),
    "ais": (AIS, AIS_SETTINGS),
    "smc": (("--refine-steps", "50", *SMC), {"refine_steps": 50, **SMC_SETTINGS}),
    "prior": (("--num-samples", "30"), {"num_samples": 30}),
    "auto": (
        (*REFINE, *SMC, "--stderr-tolerance", "0.02"),
        {"num_samples": 30, "refine_steps": 50, "stderr_tolerance": 0.02, **SMC_SETTINGS},
    ),
}


def test_the_table_is_what_the_launch_test_covers():
    assert set(LAUNCHED_METHODS) == set(ESTIMATORS)


@pytest.mark.parametrize(
    "method, processes",
    [(m, w) for w in (2, 3) for m in LAUNCHED_METHODS],
    ids=[f"{m}-{w}" for w in (2, 3) for m in LAUNCHED_METHODS],
)
def test_every_method_is_bit_for_bit_the_one_process_evaluation(one_epoch_run, method, processes):
    """One process (jobs.evaluate, one process's seeded blocks) and 2 or 3 launched processes
    give the same per-datapoint numbers, bit for bit, for every method of the table."""
    from pyro_vae import jobs

    run, vae, x, seed = one_epoch_run
    flags, settings = LAUNCHED_METHODS[method]
    one = jobs.evaluate(run, method=method, device="cpu", **settings).per_point
    done = _launch(
        "evaluate", run, "--method", method, *flags, "--no-progress", cwd=run, processes=processes
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (stored,) = RunDir(run).select_evaluations(method=method)
    assert stored.evaluation.processes == processes
    launched = stored.per_point()
    for name in ("log_px", "stderr", "ess", "elbo"):
        assert torch.equal(getattr(launched, name), getattr(one, name)), name
    torch.testing.assert_close(launched.khat, one.khat, rtol=0, atol=0, equal_nan=True)
    if method == "auto":
        assert len(set(one.estimator)) >= 2  # more than one stage was reached
        assert launched.estimator == one.estimator
        assert torch.equal(launched.draws, one.draws)
        alone = estimate(
            vae.model, vae.guide, x, "auto", seed=seed, max_plate_nesting=1, **settings
        )
        assert torch.equal(alone.log_px, one.log_px)  # the public call: the same numbers


def test_bdmc_is_shared_bit_for_bit(one_epoch_run):
    from pyro_vae.cli import main
    from pyro_vae.infer.latent import simulate

    run, vae, x, seed = one_epoch_run
    bdmc = ("bdmc", run, "--num-datapoints", "70", "--num-samples", "20", *AIS)
    assert main([*map(str, bdmc), "--no-progress"]) == 0  # one process, the same blocks
    alone = dict(np.load(run / "bdmc" / "bdmc-T5-C4.npz"))
    done = _launch(*bdmc, cwd=run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1
    summary = json.loads((run / "bdmc" / "bdmc-T5-C4.json").read_text())
    assert summary["processes"] == 2
    arrays = np.load(run / "bdmc" / "bdmc-T5-C4.npz")
    pyro.set_rng_seed(seed)
    simulated, latents = simulate(vae.model, torch.zeros(70, x.shape[1], dtype=x.dtype))
    assert torch.equal(torch.from_numpy(arrays["x"]), simulated)  # rank 0's simulation

    def forward(rows):
        return ais_log_likelihood(
            vae.model,
            vae.guide,
            rows,
            batch_size=rows.shape[0],
            max_plate_nesting=1,
            **AIS_KEYWORDS,
        )

    def reverse(index):
        first, stop = int(index[0]), int(index[-1]) + 1
        space = LatentSpace(vae.model, vae.guide, simulated[first:stop], max_plate_nesting=1)
        start = latent_rows(latents, space, first, stop, 70)
        return reverse_ais_log_likelihood(
            vae.model,
            vae.guide,
            simulated[first:stop],
            start,
            batch_size=stop - first,
            max_plate_nesting=1,
            **AIS_KEYWORDS,
        )

    lower = by_blocks(forward, simulated, seed=seed, stream=1)
    upper = by_blocks(reverse, torch.arange(70), seed=seed, stream=2)
    iwae = estimate(vae.model, vae.guide, simulated, "iwae", seed=seed, num_samples=20)
    assert np.array_equal(arrays["lower"], joined(lower).log_px.numpy())
    assert np.array_equal(arrays["upper"], joined(upper).log_px.numpy())
    assert np.array_equal(arrays["iwae"], iwae.log_px.numpy())
    assert not np.array_equal(arrays["lower"], arrays["upper"])  # two streams, two directions
    for name in ("x", "lower", "upper", "iwae"):
        assert np.array_equal(arrays[name], alone[name]), name  # one process: bit for bit


def test_a_refused_launch_says_why_once_and_leaves_nothing(tmp_path):
    done = _launch(
        "train", "--batch-size", "1", "--epochs", "1", "--out", tmp_path / "r", cwd=tmp_path
    )
    assert done.returncode != 0
    assert done.stderr.count("pyro-vae: error:") == 1
    assert "cannot be split among 2 processes" in done.stderr and "--batch-size" in done.stderr
    assert not (tmp_path / "r").exists()


def test_a_blocks_failure_names_its_rows_in_the_whole_data():
    from pyro_vae.errors import NonFiniteEstimate, UnsupportedDataError

    vae = fresh_vae()
    x = torch.bernoulli(torch.full((130, 6), 0.5, dtype=torch.float64))
    x[70, 2] = float("nan")
    with pytest.raises(UnsupportedDataError) as e, pyro.validation_enabled(False):
        estimate(vae.model, vae.guide, x, "iwae", seed=0, num_samples=3)
    assert str(e.value).startswith("in rows 64-127 (rows below counted from 64): ")

    def failing(rows):
        if rows.shape[0] == 64 and torch.isnan(rows).any():
            raise NonFiniteEstimate("log p(x) is NaN", datapoints=[6])
        return rows

    with pytest.raises(NonFiniteEstimate) as e:
        by_blocks(failing, x, seed=0)
    assert e.value.datapoints == [70]  # row 6 of the block starting at 64


def test_only_train_and_evaluate_run_under_a_launch(monkeypatch, capsys, tmp_path):
    from pyro_vae.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["plot", str(tmp_path)]) == 2
    assert "only train, evaluate and bdmc run on several processes" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")  # the other ranks print nothing
    assert main(["plot", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ""


def test_early_stopping_schedules_and_clipping_run_the_same_on_every_rank(tmp_path):
    """Every rank watches rank 0's validation score, so all stop (and halve the rate) together:
    a rank that went on alone would hang the launch in its next collective."""
    tiny = ("train", "--hidden", "16", "--latent-dim", "2", "--batch-size", "64", "--no-progress")
    extra = ("--patience", "2", "--lr-schedule", "plateau", "--lr-patience", "1")
    done = _launch(
        *tiny,
        *extra,
        "--clip-norm",
        "5",
        "--lr",
        "0.01",
        "--epochs",
        "60",
        "--no-eval",
        "--out",
        tmp_path / "r",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = RunDir(tmp_path / "r")
    last = torch.load(run.checkpoint_path, weights_only=True)
    best = torch.load(run.best_path, weights_only=True)
    stopping = last["early_stopping"]
    assert best["epoch"] == stopping["best_epoch"]
    assert last["epoch"] == 60 or last["epoch"] - stopping["best_epoch"] == 2
    assert done.stdout.count("stopped early") == (last["epoch"] < 60)
    assert last["lr_schedule"]["best"] == pytest.approx(stopping["best"])  # one score, both


def test_a_time_budget_stops_every_rank_after_the_same_epoch(tmp_path):
    """Rank 0's clock decides, and the others hear it: a rank that trained on alone would hang
    the launch in its next collective (the launch's timeout fails the test). A resumed launch of
    a run at its budget and evaluated makes no collective call that the others do not."""
    tiny = ("train", "--hidden", "16", "--latent-dim", "2", "--batch-size", "64", "--no-progress")
    args = (*tiny, "--epochs", "1000", "--max-seconds", "2", "--eval-samples", "5")
    done = _launch(*args, "--out", tmp_path / "r", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("stopped at the time budget of 2 s") == 1  # rank 0 alone prints
    seconds = [r.seconds for r in RunDir(tmp_path / "r").read_metrics()]
    assert len(seconds) < 1000 and sum(seconds[:-1]) < 2 <= sum(seconds)
    last = torch.load(RunDir(tmp_path / "r").checkpoint_path, weights_only=True)
    assert last["epoch"] == len(seconds)
    (kept,) = RunDir(tmp_path / "r").select_evaluations(num_samples=5)
    assert kept.evaluation.epochs_trained == len(seconds)
    again = _launch(*args, "--out", tmp_path / "r", "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("(stopped at its time budget of 2 s; a larger budget") == 1
    assert len(RunDir(tmp_path / "r").read_metrics()) == len(seconds)
