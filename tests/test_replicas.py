"""Replicas of one set-up (seeds, data folds) in the leaderboard: means, intervals and ties checked
against values worked by hand from the definitions."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml
from conftest import CONFIG_DIR, TINY_ENCODER
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from matplotlib.container import ErrorbarContainer
from omegaconf import OmegaConf
from PIL import Image
from test_reporting import completed, write_job
from test_sweeps import multirun

from segsweep.data.folder import FolderDataset
from segsweep.replicas import setup_key
from segsweep.reporting import collect, write_report
from segsweep.reporting.leaderboard import build_setups
from segsweep.reporting.plots import metric_bars
from segsweep.reporting.stats import replica_stats, welch_p_value

T_975_2DOF = 4.302652729749462  # Student t's 97.5% quantile for 2 degrees of freedom (tables)
# model -> best val/iou of seeds 1, 2, 3 (None: no job); val/loss of each job = 1 - val/iou.
VALUES = {"unet": (0.80, 0.82, 0.84), "pan": (0.79, 0.83, 0.81), "fpn": (0.70, 0.71, 0.72),
          "linknet": (0.75, None, None)}


def t4_cdf(t: float) -> float:
    """Student t's CDF for 4 degrees of freedom, closed form (a second implementation)."""
    u = t / math.sqrt(1 + t * t / 4)
    return 0.5 + 3 / 8 * u * (1 - u * u / 12)


def replica_job(sweep, num: int, model: str, seed: int, iou: float, status: str = "completed"):
    overrides = [f"model={model}", f"seed={seed}", "trainer=cpu"]
    payload = completed(num, overrides, iou, 1 - iou, f"{model}-resnet18-dice")
    if status != "completed":
        payload = {"status": status, "error": f"{status} at epoch 1", "overrides": overrides,
                   "job_num": num, "monitor": "val/iou"}
    write_job(sweep, f"{num}_{model}-resnet18-dice", payload, overrides)


@pytest.fixture
def replicas(tmp_path):
    """4 set-ups x seeds 1-3 (linknet: one seed), plus a failed, an interrupted and a pruned
    replica and a set-up whose every replica failed."""
    sweep = tmp_path / "sweep"
    num = 0
    for model, values in VALUES.items():
        for seed, iou in enumerate(values, start=1):
            if iou is not None:
                replica_job(sweep, num, model, seed, iou)
                num += 1
    replica_job(sweep, num, "unet", 4, 0.0, status="failed")
    replica_job(sweep, num + 1, "pan", 4, 0.0, status="interrupted")
    replica_job(sweep, num + 2, "manet", 1, 0.0, status="failed")
    replica_job(sweep, num + 3, "manet", 2, 0.0, status="failed")
    replica_job(sweep, num + 4, "fpn", 4, 0.0, status="pruned")
    return sweep


def test_stats_match_hand_computation():
    stats = replica_stats([0.80, 0.82, 0.84])
    assert stats.mean == pytest.approx(0.82) and stats.sd == pytest.approx(0.02)  # ddof=1
    half = T_975_2DOF * 0.02 / math.sqrt(3)
    assert (stats.ci_low, stats.ci_high) == pytest.approx((0.82 - half, 0.82 + half))
    # Equal variances and sizes: Welch's t = 0.01 / sqrt(2 * 0.0004 / 3), 4 degrees of freedom.
    t = 0.01 / math.sqrt(2 * 0.0004 / 3)
    p = welch_p_value(stats, replica_stats([0.79, 0.83, 0.81]))
    assert p == pytest.approx(2 * (1 - t4_cdf(t)), rel=1e-6)
    one = replica_stats([0.9])
    assert one.n == 1 and math.isnan(one.sd) and math.isnan(one.ci_low)
    assert math.isnan(welch_p_value(stats, one))
    same = replica_stats([0.5, 0.5])
    assert (same.ci_low, same.ci_high) == (0.5, 0.5)  # no spread: a zero-width interval
    assert welch_p_value(same, same) == 1.0 and welch_p_value(same, replica_stats([0.6] * 2)) == 0


def test_setups_group_seeds_rank_by_mean_and_flag_ties(replicas):
    setups = build_setups(collect(replicas)).set_index("model")
    assert setups.index.tolist() == ["unet", "pan", "linknet", "fpn", "manet"]
    assert setups["rank"].tolist()[:4] == [1, 2, 3, 4] and pd.isna(setups.loc["manet", "rank"])
    unet, pan, fpn = setups.loc["unet"], setups.loc["pan"], setups.loc["fpn"]
    assert unet["n"] == 3 and unet["mean val/iou"] == pytest.approx(0.82)
    assert unet["sd val/iou"] == pytest.approx(0.02)
    assert unet["ci95 high"] - unet["ci95 low"] == pytest.approx(2 * T_975_2DOF * 0.02 / 3 ** 0.5)
    assert unet["val/iou per replica"] == pytest.approx((0.80, 0.82, 0.84))
    assert unet["replicas"] == "seed=1, seed=2, seed=3" and unet["excluded"] == "1 failed"
    assert pan["excluded"] == "1 interrupted" and pan["n"] == 3
    assert unet["tied with best"] == "best" and pan["tied with best"] == "yes"
    assert pan["p vs best"] == pytest.approx(2 * (1 - t4_cdf(0.01 / math.sqrt(2 * 0.0004 / 3))))
    # fpn: t = 0.11 / sqrt(0.0004/3 + 0.0001/3) = 8.52 on ~2.9 Welch dof: far below 0.05.
    assert fpn["tied with best"] == "no" and fpn["p vs best"] < 0.01
    assert fpn["n"] == 3 and fpn["excluded"] == "1 pruned"
    linknet = setups.loc["linknet"]
    assert linknet["n"] == 1 and linknet["tied with best"] == "untested (1 replica)"
    assert pd.isna(linknet["sd val/iou"]) and pd.isna(linknet["p vs best"])
    manet = setups.loc["manet"]
    assert manet["n"] == 0 and manet["excluded"] == "2 failed" and manet["status"] == "failed"
    assert setups.attrs["replica_keys"] == ["seed"] and setups.attrs["swept_keys"] == ["model"]


def test_lower_is_better_metric_ranks_lowest_mean_first(replicas):
    setups = build_setups(collect(replicas, metric="val/loss")).set_index("model")
    assert setups.attrs["mode"] == "min"
    assert setups.index.tolist()[:4] == ["unet", "pan", "linknet", "fpn"]  # loss = 1 - iou
    assert setups.loc["unet", "mean val/loss"] == pytest.approx(0.18)
    assert setups.loc["pan", "tied with best"] == "yes" and setups.loc["fpn", "tied with best"] == "no"


def test_single_replica_best_leaves_every_row_untested(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (model, seed, iou) in enumerate([("unet", 1, 0.9), ("fpn", 1, 0.7), ("fpn", 2, 0.8)]):
        replica_job(sweep, num, model, seed, iou)
    setups = build_setups(collect(sweep)).set_index("model")
    assert setups.loc["unet", "tied with best"] == "best"
    assert setups.loc["fpn", "tied with best"] == "untested (1 replica)"


def test_folds_and_seeds_are_both_replica_axes(tmp_path):
    sweep = tmp_path / "sweep"
    num = 0
    for model in ("unet", "fpn"):
        for fold in (0, 1):
            for seed in (1, 2):
                overrides = [f"model={model}", f"data.fold={fold}", f"seed={seed}"]
                iou = 0.8 + 0.01 * fold + 0.001 * seed + (0.1 if model == "unet" else 0)
                write_job(sweep, f"{num}_{model}", completed(num, overrides, iou, 0.1, model),
                          overrides)
                num += 1
    setups = build_setups(collect(sweep))
    assert setups["model"].tolist() == ["unet", "fpn"] and setups["n"].tolist() == [4, 4]
    assert setups.loc[0, "mean val/iou"] == pytest.approx(0.9 + 0.005 + 0.0015)
    assert setups.loc[0, "replicas"].split(", ")[1] == "data.fold=0 seed=2"


def test_sweep_without_replicas_has_no_setup_table(tmp_path):
    sweep = tmp_path / "sweep"
    for num, model in enumerate(("unet", "fpn")):  # one seed each: ranks as before
        replica_job(sweep, num, model, 1, 0.8 + 0.01 * num)
    assert build_setups(collect(sweep)) is None
    assert "leaderboard_jobs.csv" not in {p.name for p in write_report(sweep).values()}


def test_report_shows_setup_table_error_bars_and_job_table(replicas):
    paths = write_report(replicas)
    setups, jobs = pd.read_csv(paths["csv"]), pd.read_csv(paths["jobs_csv"])
    assert setups["model"].tolist() == ["unet", "pan", "linknet", "fpn", "manet"]
    assert setups.loc[0, "val/iou per replica"] == "0.8;0.82;0.84"
    assert len(jobs) == 15 and jobs.loc[0, "job"] == "2_unet-resnet18-dice"
    markdown = paths["markdown"].read_text()
    assert "Welch" in markdown and "Student t" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("|") and "| unet " in line)
    half = T_975_2DOF * 0.02 / 3 ** 0.5
    assert f"[{0.82 - half:.4f}, {0.82 + half:.4f}]" in row and "0.8000, 0.8200, 0.8400" in row
    assert "## Jobs" in markdown and "15 jobs" in markdown
    html = paths["html"].read_text()
    assert 'class="completed tied"' in html and "untested (1 replica)" in html
    axes = metric_bars(build_setups(collect(replicas))).axes[0]
    errorbars = next(c for c in axes.containers if isinstance(c, ErrorbarContainer))
    widths = sorted(seg[1][0] - seg[0][0] for seg in errorbars.lines[2][0].get_segments()
                    if len(seg))  # linknet's single replica: no bar
    assert widths == pytest.approx([2 * T_975_2DOF * 0.01 / 3 ** 0.5, 2 * half, 2 * half])
    dots = sorted(x for line in axes.lines if line.get_marker() == "o" for x in line.get_xdata())
    assert dots == pytest.approx(sorted(v for vs in VALUES.values() for v in vs if v is not None))


def test_setup_key_drops_replica_keys():
    assert setup_key(["model=unet", "seed=3", "+data.fold=1", "loss=dice"]) == "model=unet,loss=dice"
    assert setup_key(["seed=1"]) == "default"


def test_wandb_replicas_share_the_setup_in_their_config(make_cfg, monkeypatch):
    from segsweep.resolvers import register

    register()
    monkeypatch.setenv("WANDB_MODE", "offline")

    def setup_of(*overrides):
        cfg = make_cfg("logger=wandb", "model=unet", f"encoder={TINY_ENCODER}", *overrides)
        return instantiate(cfg.logger.wandb)._wandb_init["config"]["setup"]

    first = setup_of("seed=1", "+data.fold=0")
    assert "model=unet" in first and "seed=" not in first and "data.fold" not in first
    assert setup_of("seed=2", "+data.fold=1") == first
    assert setup_of("seed=1", "+data.fold=0", "loss=dice") != first


def test_sweep_repeats_preset_expands_to_seeds():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from segsweep.resolvers import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train", overrides=["sweep=repeats", "sweep.repeats=4"], return_hydra_config=True)
        with_archs = compose("train", overrides=["sweep=[archs,repeats]"], return_hydra_config=True)
        with pytest.raises(ValueError, match="sweep.repeats=0"):
            bad = compose("train", overrides=["sweep=repeats", "sweep.repeats=0"],
                          return_hydra_config=True)
            OmegaConf.to_container(bad.hydra.sweeper.params, resolve=True)
    GlobalHydra.instance().clear()
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    assert params == {"seed": "1,2,3,4"}
    both = OmegaConf.to_container(with_archs.hydra.sweeper.params, resolve=True)
    assert both["seed"] == "1,2,3" and both["model"].startswith("unet,")  # presets compose
    # Expanded as Hydra's basic sweeper does, with a model sweep from the command line: 2 x 4 jobs.
    parsed = OverridesParser.create().parse_overrides(["seed=1,2,3,4", "model=unet,fpn"])
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    assert len(jobs) == 8 and {j[0] for j in jobs} == {f"seed={s}" for s in (1, 2, 3, 4)}


@pytest.fixture
def ten_images(tmp_path):
    """A folder dataset of 10 tiny grey images and binary masks."""
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(10):
        Image.new("L", (8, 8), 20 * i).save(tmp_path / "images" / f"s{i:02d}.png")
        Image.new("L", (8, 8), i % 2).save(tmp_path / "masks" / f"s{i:02d}.png")
    return tmp_path


def folder(root, **kwargs) -> FolderDataset:
    return FolderDataset(root, "images", "masks", ["background", "object"], in_channels=1, **kwargs)


def stems(dataset) -> list[str]:
    return [image.stem for image, _ in dataset.pairs]


def test_folds_partition_the_training_images(ten_images):
    every = [f"s{i:02d}" for i in range(10)]
    vals = [stems(folder(ten_images, split="val", fold=i, folds=3)) for i in range(3)]
    assert sorted(len(v) for v in vals) == [3, 3, 4]  # 10 = 4 + 3 + 3
    assert sorted(sum(vals, [])) == every  # each image in exactly one validation fold
    for i, val in enumerate(vals):
        train = stems(folder(ten_images, split="train", fold=i, folds=3))
        assert sorted(train + val) == every and not set(train) & set(val)
    assert vals[1] == stems(folder(ten_images, split="val", fold=1, folds=3))  # deterministic
    assert stems(folder(ten_images, split="all", fold=1, folds=3)) == every  # a test split


@pytest.mark.parametrize("fold, folds, message", [
    (3, 3, r"data.fold=3 must be one of 0..2"), (-1, 3, "data.fold=-1"),
    (0, 1, "data.folds=1 must be a whole number >= 2"), (0, 11, "data.folds=11 is more than the 10")])
def test_bad_fold_is_a_clear_error(ten_images, fold, folds, message):
    with pytest.raises(ValueError, match=message):
        folder(ten_images, split="val", fold=fold, folds=folds)


def test_data_fold_from_the_command_line(make_cfg, ten_images):
    cfg = make_cfg("data=folder", f"data.root={ten_images}", "data.dataset.in_channels=1",
                   "data.fold=2", "data.folds=3", "data.num_workers=0", fast=False)
    datamodule = instantiate(cfg.data, _convert_="all")
    assert stems(datamodule.build("val")) == stems(folder(ten_images, split="val", fold=2, folds=3))
    assert len(datamodule.build("train")) + len(datamodule.build("val")) == 10


def test_repeats_multirun_reports_one_setup_of_two_seeds(tmp_path):
    sweep = multirun(tmp_path, "model=classic_unet", "sweep=repeats", "sweep.repeats=2", "logger=none")
    jobs = pd.read_csv(sweep / "leaderboard_jobs.csv")
    assert sorted(jobs["seed"]) == [1, 2] and set(jobs["status"]) == {"completed"}
    setup = pd.read_csv(sweep / "leaderboard.csv").iloc[0]
    assert setup["n"] == 2 and setup["mean val/iou"] == pytest.approx(jobs["best val/iou"].mean())


def test_repeats_sweep_cut_short_lists_its_seeds_and_unstarted_replicas(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (model, iou) in enumerate([("unet", 0.8), ("fpn", 0.7)]):  # Hydra's order: seed=1
        overrides = ["seed=1", f"model={model}", "sweep=repeats"]  # with each model, then seed=2
        write_job(sweep, f"{num}_{model}", completed(num, overrides, iou, 0.1, model), overrides)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({  # as Hydra saves it: unresolved
        "sweep": {"repeats": 3},
        "hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                              "params": {"seed": "${replica_seeds:${sweep.repeats}}"}},
                  "overrides": {"task": ["model=unet,fpn", "sweep=repeats"]}}}))
    setups = build_setups(collect(sweep)).set_index("model")
    assert setups["n"].tolist() == [1, 1] and setups["excluded"].tolist() == ["2 not started"] * 2
    markdown = write_report(sweep)["markdown"].read_text()
    assert "`seed=1,2,3`" in markdown and "6 jobs" in markdown
