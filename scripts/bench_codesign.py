"""Co-design benchmark: the joint (bilevel) search against a sequential one, at equal budgets.

Both searches get exactly the same number of accuracy evaluations (compression profiles compiled
and run on the data: the expensive step) and the same hardware space, area budget (the VTA
default's area) and accuracy limit (at most 1 point below the float model). Each optimises the
one objective it is compared on (latency, then EDP, in separate runs):

- joint: `BilevelSearch` over compression and hardware together: XGBoost proposes the
  compression profiles, every hardware design of each is costed;
- sequential: hardware first, for the int8 model (every hardware design, with its mapping:
  where the depthwise convs run, costed for the int8 profiles, with and without the ALU
  multiplier: 2 accuracy evaluations), the best one fixed;
  then the compression for that hardware, by the same bilevel search over compression only,
  with the rest of the budget.

Models, with real accuracy on labelled data, calibrated and evaluated on disjoint samples:
- mnist-8: top-1 on MNIST test images (calibration: other test images);
- PP-OCR's text-direction classifier (ch_ppocr_mobile_v2.0_cls, tests/models/real): top-1 on
  text lines rendered with known fonts and orientation (upright or upside down: its two
  classes), calibration on other rendered lines;
- PP-OCRv6 tiny's text recogniser (`--models rec`; committed in tests/models/real with its
  character dictionary): character accuracy on upright text lines rendered with known
  text (greedy CTC decoding; codesign.tuner.accuracy), calibration on other rendered lines.
  Unlike the classifier, whose depthwise convs keep most of its latency on the host, 98 % of its
  MACs and most of its latency are the core's. (Whole lines read right would leave nothing
  feasible: the int8 model itself reads 95.0 % of the 200 lines against the float model's 98.0 %,
  while its character accuracy is 99.43 % against 99.55 %.)

Every (model, objective) runs for each seed; the table gives the median and the range of the
best feasible value over the seeds, the ratio of the medians (sequential / joint), and the
median wall time of each search's own work (`search_seconds`: measuring the profiles it used and
sweeping their hardware), which shows the two get the same allowance in time as in accuracy
evaluations.

`--ceiling` also measures every compression profile of the space and costs every hardware design
for each: the best feasible design overall (what any joint search can find) against the best
feasible compression on the hardware that is best for the int8 model (what any sequential
search can find). Their ratio bounds what a joint search can show over a sequential one on
this space and model, whatever its budget.

    python scripts/bench_codesign.py [--seeds 5] [--models mnist,ocr,rec] [--budget-mnist 12] [--budget-ocr 8]
                                     [--budget-rec 8] [--ceiling] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codesign.corpus import text_directions, text_lines  # noqa: E402
from codesign.demo import MNIST_MODEL, load_mnist_test  # noqa: E402
from codesign.files import write_text_atomic  # noqa: E402
from codesign.hardware import area_mm2, load_hardware  # noqa: E402
from codesign.tuner.bilevel import BilevelSearch, anchors, plan_bilevel  # noqa: E402
from codesign.tuner.database import Database  # noqa: E402
from codesign.tuner.evaluator import Evaluator  # noqa: E402
from codesign.tuner.executors import SerialExecutor  # noqa: E402
from codesign.tuner.profile_builder import profile_key  # noqa: E402
from codesign.tuner.space import HARDWARE_KNOBS, is_design_knob, space_from_dict  # noqa: E402

console = Console()
REAL_MODELS = ROOT / "tests" / "models" / "real"
OCR_MODEL = REAL_MODELS / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
OCR_SHAPE = (1, 3, 48, 192)
REC_MODEL = REAL_MODELS / "ppocrv6_tiny_rec.onnx"
REC_DICTIONARY = REC_MODEL.with_suffix(".yml")  # its inference.yml, which holds the dictionary
REC_SHAPE = (1, 3, 48, 320)
OBJECTIVES = ("latency", "edp")
HARDWARE = {
    "block_in": [8, 16, 32],
    "block_out": [8, 16, 32],
    "inp_buffer_kib": [8, 16, 32],
    "wgt_buffer_kib": [32, 128, 256],
    "acc_buffer_kib": [32, 64, 128],
    "dram_bytes_per_cycle": [4, 8, 16],
    "alu_multiplier": [True, False],
}
if "precision_scalable" in HARDWARE_KNOBS:  # the precision-scalable GEMM core, where it exists
    HARDWARE["precision_scalable"] = [False, True]
# The first choice of each is the int8 model's.
COMPRESSION = {"weight_bits": [8, 4], "prune": [0.0, 0.25, 0.5]}
# Where the depthwise convs run (where the base's modelled cost puts them, or all on the core): a
# mapping knob, swept with the hardware by both searches (dropped for a model without grouped convs).
SCHEDULE = {"mode": "auto", "grouped_convs": ["cost", "core"]}
GROUPS = {"convs": ["conv2d_*"], "classifier": ["matmul_*"]}


@dataclasses.dataclass
class ModelCase:
    name: str
    model: Path
    data: Path  # evaluation samples and labels
    calibration: Path  # other samples of the same kind
    budget: int  # accuracy evaluations per search
    shapes: dict | None = None  # input shapes to bind


def space_for(objective: str):
    area = area_mm2(load_hardware("vta_default"))["total"]
    return space_from_dict(
        {
            "objectives": [objective],
            "hardware": {"base": "vta_default", **HARDWARE},
            "compression": {**COMPRESSION, "groups": GROUPS},
            "schedule": SCHEDULE,
            "constraints": {"area_mm2_max": round(area, 4), "accuracy_drop_max": 1.0},
        },
        f"co-design space ({objective})",
    )


def restricted(space, fixed: dict):
    knobs = {name: ([fixed[name]] if name in fixed else choices) for name, choices in space.knobs.items()}
    return dataclasses.replace(space, knobs=knobs)


def best(records, metric: str):
    feasible = [r for r in records if r.feasible]
    return min(feasible, key=lambda r: (r.metrics[metric], r.index)) if feasible else None


def search(space, executor, layers, budget: int, seed: int, folder: Path, name: str) -> list:
    """A bilevel run with its own database (`name`: objective, search and seed; a run that found
    another's database would return that run's records)."""
    database = Database(folder / f"{name}.jsonl")
    return BilevelSearch().run(plan_bilevel(space, layers), database, executor, budget, seed, layers)


def joint(space, executor, layers, budget, seed, folder, objective) -> list:
    return search(space, executor, layers, budget, seed, folder, f"{objective}-joint-{seed}")


def sequential(space, executor, layers, budget, seed, folder, objective) -> list:
    int8 = {name: choices[0] for name, choices in space.knobs.items() if name.startswith("comp.")}
    int8_space = restricted(space, int8)
    hardware_budget = plan_bilevel(int8_space, layers).outer.size()  # the int8 profiles: 2 multiplier choices
    hardware_first = search(int8_space, executor, layers, hardware_budget, seed, folder, f"{objective}-seq-hw-{seed}")
    chosen = best(hardware_first, objective)
    fixed = {name: value for name, value in chosen.config.items() if is_design_knob(name)}
    # The compression step's first profile is its baseline, the int8 profile step 1 measured with
    # the chosen multiplier: free, so it does not count (else the sequential search would measure
    # one profile fewer than the joint one).
    rest = budget - hardware_budget + 1
    name = f"{objective}-seq-comp-{seed}"
    compression = search(restricted(space, fixed), executor, layers, rest, seed, folder, name)
    return hardware_first + compression


def search_seconds(space, evaluator, records) -> float:
    """The wall time a search's work takes on its own: measuring each profile it used (compile,
    accuracy run) and sweeping that profile's hardware, whichever search measured it first (the
    benchmark's searches share one evaluator, so a profile is measured once for all of them)."""
    sweeps = {}
    for record in records:
        multiplier = space.hardware(record.config).alu_has_multiplier
        key = profile_key(space.compression(record.config, evaluator.layers), multiplier)
        sweeps.setdefault(key, record.seconds)  # every record of a profile's front holds its sweep's time
    return sum(evaluator.profiles[key].seconds + sweep for key, sweep in sweeps.items())


def ceiling(space, executor, layers, objective: str) -> dict:
    """The joint and sequential optima of `space` by enumeration (every profile measured, every
    hardware design costed), and their ratio."""
    plan = plan_bilevel(space, layers)
    int8_keys = {plan.outer.key(anchor) for anchor in anchors(plan)}
    values: dict[tuple, float] = {}  # (profile key, hardware key) -> objective, feasible designs only
    int8_hardware: dict[str, float] = {}  # hardware key (the multiplier included) -> the int8 profile's value
    for choices in itertools.product(*plan.outer.knobs.values()):
        profile = dict(zip(plan.outer.knobs, choices))
        profile_key = plan.outer.key(profile)
        configs = plan.configs(profile)
        for _, config, result in executor.run(list(enumerate(configs))):
            if not result["feasible"]:
                continue
            hardware_key = json.dumps({k: v for k, v in config.items() if is_design_knob(k)}, sort_keys=True)
            value = result["metrics"][objective]
            values[profile_key, hardware_key] = value
            if profile_key in int8_keys:
                int8_hardware[hardware_key] = value
    joint_best = min(values.values())
    best_for_int8 = min(int8_hardware.values())
    chosen = {key for key, value in int8_hardware.items() if value == best_for_int8}  # ties: the sequential's best luck
    sequential_best = min(v for (_, hardware_key), v in values.items() if hardware_key in chosen)
    return {"joint": joint_best, "sequential": sequential_best, "ratio": sequential_best / joint_best,
            "profiles": plan.outer.size(), "hardware": len(plan.inner)}  # fmt: skip


def run_case(case: ModelCase, seeds: int, folder: Path, with_ceiling: bool = False, save=lambda results: None) -> dict:
    """{objective: {"joint": [best per seed], "sequential": [...]}, ...} and the run's facts;
    `save` gets the results so far after each seed (a long run keeps what it finished)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{case.name}-", dir=folder))
    evaluator = Evaluator(case.model, space_for("latency"), case.data, case.shapes, calibration_data=case.calibration)
    executor = SerialExecutor(None, evaluator)  # one evaluator: a profile measured once serves every run
    results: dict = {"float_accuracy": evaluator.float_accuracy(), "budget": case.budget}
    start = time.perf_counter()
    for objective in OBJECTIVES:
        space = space_for(objective).for_layers(evaluator.layers, evaluator.prunable, evaluator.grouped_convs)
        evaluator.batches.space = space  # the objectives the batch evaluator reports
        per_seed = {"joint": [], "sequential": [], "joint_accuracy": [], "sequential_accuracy": []}
        results[objective] = per_seed
        for seed in range(seeds):
            for name, records in (
                ("joint", joint(space, executor, evaluator.layers, case.budget, seed, folder, objective)),
                ("sequential", sequential(space, executor, evaluator.layers, case.budget, seed, folder, objective)),
            ):
                winner = best(records, objective)
                per_seed.setdefault(f"{name}_seconds", []).append(search_seconds(space, evaluator, records))
                per_seed[name].append(winner.metrics[objective] if winner else float("inf"))
                per_seed[f"{name}_accuracy"].append(winner.metrics["accuracy"] if winner else float("nan"))
            console.print(
                f"  {case.name} {objective} seed {seed}: sequential {_value(per_seed['sequential'][-1], objective)} "
                f"({per_seed['sequential_accuracy'][-1]:.2f} %) / joint {_value(per_seed['joint'][-1], objective)} "
                f"({per_seed['joint_accuracy'][-1]:.2f} %) = {per_seed['sequential'][-1] / per_seed['joint'][-1]:.2f}x"
            )
            save(results)
        if with_ceiling:
            per_seed["ceiling"] = ceiling(space, executor, evaluator.layers, objective)
            save(results)
    results["seconds"] = time.perf_counter() - start
    results["profiles_measured"] = len(evaluator.profiles)
    evaluator.close()
    return results


# ---- data -------------------------------------------------------------------------------------


def mnist_case(folder: Path, budget: int) -> ModelCase:
    images, labels = load_mnist_test()
    data, calibration = folder / "mnist_eval.npz", folder / "mnist_calibration.npz"
    np.savez(data, Input3=images[:2000, 0], labels=labels[:2000])
    np.savez(calibration, Input3=images[5000:5064, 0])  # disjoint from the evaluation images
    return ModelCase("mnist-8", MNIST_MODEL, data, calibration, budget)


def ocr_case(folder: Path, budget: int) -> ModelCase:
    data, calibration = folder / "ocr_eval.npz", folder / "ocr_calibration.npz"
    images, labels = text_directions(OCR_SHAPE, 400, seed=1)
    np.savez(data, x=images, labels=labels)
    np.savez(calibration, x=text_directions(OCR_SHAPE, 32, seed=2)[0])
    return ModelCase("ppocr_cls", OCR_MODEL, data, calibration, budget, {"x": OCR_SHAPE})


def rec_case(folder: Path, budget: int) -> ModelCase:
    import yaml  # the dictionary is in the model's inference.yml

    dictionary = yaml.safe_load(REC_DICTIONARY.read_text())["PostProcess"]["character_dict"]
    classes = {str(c): index for index, c in enumerate(dictionary, start=1)}  # 0: CTC's blank
    classes[" "] = len(dictionary) + 1  # PaddleOCR appends the space
    data, calibration = folder / "rec_eval.npz", folder / "rec_calibration.npz"
    images, texts = text_lines(REC_SHAPE, 200, seed=1)
    labels = np.full((len(texts), max(map(len, texts))), -1, dtype=np.int64)
    for row, text in enumerate(texts):
        labels[row, : len(text)] = [classes[c] for c in text]
    np.savez(data, x=images, labels=labels)
    np.savez(calibration, x=text_lines(REC_SHAPE, 32, seed=2)[0])
    return ModelCase("ppocrv6_tiny_rec", REC_MODEL, data, calibration, budget, {"x": REC_SHAPE})


# ---- report -----------------------------------------------------------------------------------


def report(results: dict) -> None:
    table = Table(title="Best feasible design (area <= VTA default, accuracy drop <= 1 point)", title_justify="left")
    columns = ("model", "objective", "sequential: median [range]", "joint: median [range]", "seq / joint",
               "wall s per search: seq / joint")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "objective") else "right")
    for model, r in results.items():
        for objective in OBJECTIVES:
            seq, joint_values = r[objective]["sequential"], r[objective]["joint"]
            if not seq:  # --seeds 0: the ceiling only
                continue
            ratio = statistics.median(seq) / statistics.median(joint_values)
            wall = " / ".join(f"{statistics.median(r[objective][f'{n}_seconds']):.0f}" for n in ("sequential", "joint"))
            table.add_row(
                model, objective, _spread(seq, objective), _spread(joint_values, objective), f"{ratio:.2f}x", wall
            )
        console.print(
            f"{model}: float accuracy {r['float_accuracy']:.2f} %, {r['budget']} accuracy evaluations per search, "
            f"{r['profiles_measured']} distinct profiles measured in all, {r['seconds']:.0f} s"
        )
    console.print(table)
    ceilings = [(model, objective, r[objective]["ceiling"]) for model, r in results.items() for objective in OBJECTIVES
                if "ceiling" in r[objective]]  # fmt: skip
    if ceilings:
        table = Table(title="Ceiling: every profile measured, every hardware design costed", title_justify="left")
        for column in ("model", "objective", "designs", "best sequential", "best joint", "seq / joint"):
            table.add_column(column, justify="left" if column in ("model", "objective") else "right")
        for model, objective, c in ceilings:
            table.add_row(
                model, objective, f"{c['profiles']} x {c['hardware']}", _value(c["sequential"], objective),
                _value(c["joint"], objective), f"{c['ratio']:.2f}x",
            )  # fmt: skip
        console.print(table)


def _value(value: float, objective: str) -> str:
    scale, unit = _UNITS[objective]
    return f"{value * scale:.4g} {unit}"


def _spread(values: list[float], objective: str) -> str:
    scale, _ = _UNITS[objective]
    return f"{_value(statistics.median(values), objective)} [{min(values) * scale:.4g}-{max(values) * scale:.4g}]"


_UNITS = {"latency": (1e3, "ms"), "edp": (1e9, "nJ*s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="0 with --ceiling: the ceiling only")
    parser.add_argument("--budget-mnist", type=int, default=12)
    parser.add_argument("--budget-ocr", type=int, default=8)
    parser.add_argument("--budget-rec", type=int, default=8)
    parser.add_argument("--models", default="mnist,ocr", help="comma-separated: mnist, ocr, rec")
    parser.add_argument("--ceiling", action="store_true", help="also enumerate the space (see above)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = {}

    def save(figures: dict) -> None:
        if args.json:
            write_text_atomic(args.json, json.dumps(figures, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        cases = {
            "mnist": lambda: mnist_case(folder, args.budget_mnist),
            "ocr": lambda: ocr_case(folder, args.budget_ocr),
            "rec": lambda: rec_case(folder, args.budget_rec),
        }
        for key in args.models.split(","):
            case = cases[key]()
            console.print(
                f"{case.name}: joint vs sequential, {args.seeds} seeds, {case.budget} accuracy evaluations ..."
            )
            results[case.name] = run_case(
                case, args.seeds, folder, args.ceiling, lambda partial, name=case.name: save({**results, name: partial})
            )
            save(results)
    report(results)


if __name__ == "__main__":
    main()
