"""A corpus of real exported ONNX models, described as data (`corpus.toml` beside the models),
with realistic inputs for each: rendered text lines and pages for OCR models, voiced audio for
voice-activity models, real file bytes for file-type classifiers.

Each model entry says where the file came from and how to feed it:

    [[model]]
    name = "ppocr_cls"
    file = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    source = "rapidocr-onnxruntime 1.4.4: rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
    exporter = "Paddle2ONNX"
    licence = "Apache-2.0"
    input_shapes = { x = [1, 3, 48, 192] }
    input_values = {}            # inputs frozen to constants (--input-value)
    inputs = { x = "text_line" } # a generator per input (INPUT_KINDS)
    classifier = true            # compare top-1 as well as cosine
    sequence = true              # a recogniser: top-1 of every step (the last axis holds classes)
    data = "speech_16k.npz"      # recordings for "speech" inputs, or arrays for "frames" inputs
    frame_context = 64           # "speech" rows repeat this many samples of the row before (silero)
    audio_scale = 1.0            # "speech" sample values: int16 units times this (default 1 / 32768)
    frames = "mel"               # "frames" inputs: consecutive rows of this array of `data`
    stream = { state = "stateN" }  # state inputs fed from these outputs of earlier calls, as a
    stream_calls = 8             #   streaming user does: the calls before the sample, on its audio
    decision_threshold = 0.5     # a streamed detector's first output: a decision is output > this

Inputs for calibration and evaluation come from disjoint seeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sysconfig
from pathlib import Path

import numpy as np

from codesign import toml as tomllib
from codesign.errors import UsageError
from codesign.metrics import cosine, output_cosines

WORDS = (
    "invoice total amount date customer order number street city station report energy tensor "
    "accelerator memory buffer latency design hardware software model layer python ocr text line"
).split()
# Bundled (codesign/data/fonts, provenance in its README), so a seed renders the same pixels on
# every machine whatever fonts it has installed.
FONT_DIR = Path(__file__).parent / "data" / "fonts"
FONT_FILES = tuple(FONT_DIR / name for name in ("DejaVuSans.ttf", "DejaVuSansCondensed.ttf", "DejaVuSerif.ttf"))


@dataclasses.dataclass
class CorpusModel:
    name: str
    path: Path
    source: str
    exporter: str
    licence: str
    input_shapes: dict[str, tuple[int, ...]]
    input_values: dict[str, list[str]]
    inputs: dict[str, str]
    classifier: bool = False
    sequence: bool = False  # top-1 per step along the output's last axis (a text recogniser's slots)
    data: Path | None = None  # recordings the "speech" inputs cut windows from (.npz with 'audio'), or frames
    frame_context: int = 0  # samples each row of a "speech" input repeats from the row before
    audio_scale: float = 1 / 32768  # "speech" values per int16 unit: [-1, 1] by default
    frames: str = ""  # the array of `data` "frames" inputs take consecutive rows of
    stream: dict[str, str] = dataclasses.field(default_factory=dict)  # state input -> output feeding it
    stream_calls: int = 0
    decision_threshold: float | None = None  # a streamed detector's first output is a decision above it
    constant_weights: bool = False  # test data whose weights are constants: its int8 cosine means nothing
    # The model's compression choices (a --compression document): what a user compiles it with
    compression: dict = dataclasses.field(default_factory=dict)

    def compression_config(self):
        """The entry's compression choices (corpus.toml's `compression`, a --compression document)."""
        from codesign.compression import compression_from_dict

        return compression_from_dict(self.compression, f"corpus model '{self.name}': compression")

    def sample(self, seed: int) -> dict[str, np.ndarray]:
        """One realistic input per model input (frozen inputs excluded). With `stream`, the
        state inputs hold what the model (onnxruntime, float) returned after `stream_calls`
        earlier calls on the audio just before the sample's."""
        rng = np.random.default_rng(seed)
        calls = self.stream_calls if self.stream else 0
        samples, speech = {}, {}
        for name, kind in self.inputs.items():
            if kind == "speech":
                shape = self.input_shapes[name]
                speech[name] = speech_calls(shape, rng, self.data, self.frame_context, calls + 1, self.audio_scale)
                samples[name] = speech[name][-1]
            elif kind == "frames":
                samples[name] = frames_input(self.input_shapes[name], rng, self.data, self.frames)
            else:
                samples[name] = INPUT_KINDS[kind](self.input_shapes[name], rng)
        if calls:
            samples.update(self._streamed_states(samples, {name: rows[:-1] for name, rows in speech.items()}))
        return samples

    def _streamed_states(self, sample: dict[str, np.ndarray], earlier: dict[str, list]) -> dict[str, np.ndarray]:
        session = self._session()
        states = {name: sample[name] for name in self.stream}
        output_names = [o.name for o in session.get_outputs()]
        for call in range(self.stream_calls):
            feed = {**sample, **states, **{name: chunks[call] for name, chunks in earlier.items()}}
            results = dict(zip(output_names, session.run(None, self.onnx_feed(feed, session.get_inputs()))))
            states = {name: results[output].astype(np.float32) for name, output in self.stream.items()}
        return states

    def _session(self):
        if getattr(self, "_ort_session", None) is None:
            self._ort_session = onnxruntime_session(self.path)
        return self._ort_session

    def samples(self, count: int, first_seed: int) -> dict[str, np.ndarray]:
        """`count` samples stacked on a new leading axis, as calibration files hold them."""
        drawn = [self.sample(first_seed + i) for i in range(count)]
        return {name: np.stack([d[name] for d in drawn]) for name in self.inputs}

    def onnx_feed(self, sample: dict[str, np.ndarray], model_inputs) -> dict[str, np.ndarray]:
        """The sample plus frozen values, typed as the ONNX model declares them (for onnxruntime)."""
        feed = dict(sample)
        for spec in model_inputs:
            if spec.name in self.input_values:
                dtype = _ORT_DTYPES.get(spec.type, np.float32)
                feed[spec.name] = np.array([float(v) for v in self.input_values[spec.name]]).astype(dtype)
                if not spec.shape:
                    feed[spec.name] = feed[spec.name].reshape(())
        return feed


_ORT_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}


def load_corpus(folder: str | Path) -> list[CorpusModel]:
    folder = Path(folder)
    path = folder / "corpus.toml"
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise UsageError(f"{folder}: no corpus.toml") from err
    models = []
    for entry in doc.get("model", []):
        unknown = {kind for kind in entry.get("inputs", {}).values() if kind not in (*INPUT_KINDS, *DATA_KINDS)}
        if unknown:
            raise UsageError(f"{path}: model '{entry.get('name')}': unknown input kind {', '.join(sorted(unknown))}")
        models.append(
            CorpusModel(
                name=entry["name"],
                path=folder / entry["file"],
                source=entry.get("source", ""),
                exporter=entry.get("exporter", ""),
                licence=entry.get("licence", ""),
                input_shapes={k: tuple(v) for k, v in entry.get("input_shapes", {}).items()},
                input_values={k: [str(x) for x in np.atleast_1d(v)] for k, v in entry.get("input_values", {}).items()},
                inputs=dict(entry.get("inputs", {})),
                classifier=bool(entry.get("classifier", False)),
                sequence=bool(entry.get("sequence", False)),
                data=folder / entry["data"] if "data" in entry else None,
                frame_context=int(entry.get("frame_context", 0)),
                audio_scale=float(entry.get("audio_scale", 1 / 32768)),
                frames=str(entry.get("frames", "")),
                stream=dict(entry.get("stream", {})),
                stream_calls=int(entry.get("stream_calls", 0)),
                decision_threshold=float(entry["decision_threshold"]) if "decision_threshold" in entry else None,
                constant_weights=bool(entry.get("constant_weights", False)),
                compression=dict(entry.get("compression", {})),
            )
        )
    return models


# ---- realistic inputs --------------------------------------------------------------------------


def _font(rng: np.random.Generator, size: int):
    from PIL import ImageFont

    first = rng.permutation(len(FONT_FILES))[0]  # a permutation, as when fonts were searched in turn: same draws
    return ImageFont.truetype(str(FONT_FILES[first]), size)


def _phrase(rng: np.random.Generator, words: int) -> str:
    text = " ".join(rng.choice(WORDS, size=words))
    return text + f" {int(rng.integers(10, 99999))}" if rng.random() < 0.5 else text


def render_text_line(height: int, width: int, rng: np.random.Generator, upside_down: bool | None = None) -> np.ndarray:
    """(height, width, 3) uint8: dark text on a light background, as a cropped OCR text line;
    upside down (PP-OCR's direction classifier's other class) when asked, else at random."""
    return _text_line(height, width, rng, upside_down)[0]


def _text_line(height: int, width: int, rng: np.random.Generator, upside_down: bool | None) -> tuple[np.ndarray, str]:
    """render_text_line's image, and the text it shows."""
    from PIL import Image, ImageDraw

    ink, paper = int(rng.integers(0, 80)), int(rng.integers(190, 256))
    canvas = Image.new("RGB", (width * 2, height), (paper,) * 3)
    font = _font(rng, int(height * rng.uniform(0.55, 0.8)))
    draw = ImageDraw.Draw(canvas)
    text = _phrase(rng, int(rng.integers(1, 4)))
    _, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((int(rng.integers(1, 6)), (height - (bottom - top)) // 2 - top), text, fill=(ink,) * 3, font=font)
    used = min(width * 2, right + 8)
    line = canvas.crop((0, 0, used, height)).resize((min(width, used), height))
    full = Image.new("RGB", (width, height), (paper,) * 3)
    full.paste(line, (0, 0))
    flip = rng.random() < 0.5 if upside_down is None else upside_down
    if flip:
        full = full.rotate(180)
    return np.asarray(full), text


def render_page(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(height, width, 3) uint8: a few text lines at random places, as a document photo."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(page)
    for _ in range(int(rng.integers(3, 8))):
        font = _font(rng, int(rng.integers(12, 28)))
        xy = (int(rng.integers(0, width // 2)), int(rng.integers(0, height - 20)))
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        draw.text(xy, _phrase(rng, int(rng.integers(1, 4))), fill=ink, font=font)
    noise = rng.normal(0, 4, (height, width, 3))
    return np.clip(np.asarray(page) + noise, 0, 255).astype(np.uint8)


def _chw(image: np.ndarray) -> np.ndarray:
    return image.transpose(2, 0, 1)[None].astype(np.float32)


def text_line_input(shape, rng, upside_down: bool | None = None) -> np.ndarray:
    """PaddleOCR's direction classifier / recogniser input: (x / 255 - 0.5) / 0.5, NCHW; upside
    down or not at random (the classifier's two classes) unless `upside_down` says."""
    image = render_text_line(shape[2], shape[3], rng, upside_down)
    return ((_chw(image) / 255.0 - 0.5) / 0.5).astype(np.float32)


def upright_text_line_input(shape, rng) -> np.ndarray:
    """A recogniser's input: an upright line (in PaddleOCR's pipeline the direction classifier
    turns the others before recognition)."""
    return text_line_input(shape, rng, upside_down=False)


def text_directions(shape, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A labelled set for PP-OCR's direction classifier: `count` rendered text lines (NCHW, its
    normalisation), every other one upside down (label 1, its second class)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    lines = [render_text_line(shape[2], shape[3], rng, upside_down=bool(flip)) for flip in labels]
    images = np.stack([line.transpose(2, 0, 1) for line in lines]).astype(np.float32)
    return ((images / 255.0 - 0.5) / 0.5).astype(np.float32), labels


def text_lines(shape, count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """A labelled set for a text recogniser: `count` upright rendered text lines (NCHW, PaddleOCR's
    normalisation) and the text each shows."""
    rng = np.random.default_rng(seed)
    lines = [_text_line(shape[2], shape[3], rng, upside_down=False) for _ in range(count)]
    images = np.stack([image.transpose(2, 0, 1) for image, _ in lines]).astype(np.float32)
    return ((images / 255.0 - 0.5) / 0.5).astype(np.float32), [text for _, text in lines]


def page_input(shape, rng) -> np.ndarray:
    """PaddleOCR's detector input: ImageNet mean / std normalisation, NCHW."""
    image = _chw(render_page(shape[2], shape[3], rng)) / 255.0
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    return ((image - mean) / std).astype(np.float32)


def page_pixels_input(shape, rng) -> np.ndarray:
    """A page as raw 0-255 pixels, NCHW (YOLOX-style detectors)."""
    return _chw(render_page(shape[2], shape[3], rng))


def page_unit_input(shape, rng) -> np.ndarray:
    """A page scaled to [0, 1], NCHW (ultralytics YOLO detectors)."""
    return (_chw(render_page(shape[2], shape[3], rng)) / 255.0).astype(np.float32)


def gray_text_line_input(shape, rng) -> np.ndarray:
    """An upright grey text line scaled to [0, 1], (1, 1, H, W) (ddddocr's recogniser)."""
    image = render_text_line(shape[2], shape[3], rng, upside_down=False)
    return (image.mean(axis=2) / 255.0)[None, None].astype(np.float32)


def voiced_audio(shape, rng) -> np.ndarray:
    """16 kHz audio frames: a voiced vowel-like tone (harmonics of a gliding pitch) under an
    envelope, or background noise alone, at speech-like levels."""
    count = int(np.prod(shape))
    t = np.arange(count) / 16000.0
    noise = rng.normal(0, 0.01, count)
    if rng.random() < 0.3:
        return noise.reshape(shape).astype(np.float32)
    pitch = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / 16000.0
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(np.pi * t / t[-1]) * 1.5, 0, 1) if count > 1 else 1.0
    return (0.2 * voice * envelope + noise).reshape(shape).astype(np.float32)


def speech_calls(shape, rng, recordings: Path, context: int, calls: int, scale: float = 1 / 32768) -> list[np.ndarray]:
    """`calls` consecutive inputs of real speech (with the pauses between utterances), int16
    values times `scale` ([-1, 1] by default), from a random place. Each row of an input holds
    width - context new samples after the last `context` samples of the row before (how silero's
    wrapper frames audio)."""
    audio = np.load(recordings)["audio"]
    hop = shape[-1] - context
    rows = int(np.prod(shape[:-1]))
    first = int(rng.integers(context, audio.size - hop * rows * calls - shape[-1]))
    return framed_calls(audio, first, shape, context, calls, scale)


def framed_calls(audio: np.ndarray, first: int, shape, context: int, calls: int, scale: float) -> list[np.ndarray]:
    """`calls` consecutive inputs of `shape` whose new samples start at `first`, each row
    repeating the last `context` samples of the row before."""
    width = shape[-1]
    hop = width - context
    rows = int(np.prod(shape[:-1]))
    starts = first - context + hop * np.arange(rows * calls)
    frames = np.stack([audio[start : start + width] for start in starts]) * scale
    return [chunk.reshape(shape).astype(np.float32) for chunk in np.split(frames, calls)]


def frames_input(shape, rng, data: Path, key: str) -> np.ndarray:
    """shape[1] consecutive rows of the array `key` of `data` (features a front end computed from
    real audio, such as openWakeWord's mel frames or speech embeddings), from a random place."""
    rows = np.load(data)[key]
    count = shape[1]
    start = int(rng.integers(0, rows.shape[0] - count + 1))
    return rows[start : start + count].reshape(shape).astype(np.float32)


def zeros_input(shape, rng) -> np.ndarray:
    return np.zeros(shape, np.float32)


def file_bytes_input(shape, rng) -> np.ndarray:
    """magika's features of a real file, one of the Python standard library's top-level modules
    (the same files from commit to commit, unlike this package's own): first and last 1,024
    bytes (whitespace stripped), padded with token 256."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    data = files[int(rng.integers(len(files)))].read_bytes()
    half = shape[-1] // 2
    begin, end = list(data.lstrip()[:half]), list(data.rstrip()[-half:])
    begin += [256] * (half - len(begin))
    end = [256] * (half - len(end)) + end
    return np.array(begin + end, np.int32).reshape(shape)


def random_input(shape, rng) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


DATA_KINDS = ("speech", "frames")  # inputs read from the entry's `data` file
INPUT_KINDS = {
    "text_line": text_line_input,
    "upright_text_line": upright_text_line_input,
    "page": page_input,
    "page_pixels": page_pixels_input,
    "page_unit": page_unit_input,
    "gray_text_line": gray_text_line_input,
    "audio": voiced_audio,
    "zeros": zeros_input,
    "file_bytes": file_bytes_input,
    "random": random_input,
}


# ---- checking a model end to end -----------------------------------------------------------------


@dataclasses.dataclass
class ModelCheck:
    """One corpus model compiled, run and simulated; figures against onnxruntime's float run."""

    name: str
    compiled: bool
    blocker: str = ""
    float_cosine: list[float] = dataclasses.field(default_factory=list)  # imported float graph vs onnxruntime
    int8_cosine: list[float] = dataclasses.field(default_factory=list)  # compiled module vs onnxruntime
    top1_agreement: float | None = None
    # A text recogniser: the share of inputs whose greedy CTC decoding (the text read) equals onnxruntime's.
    same_text: float | None = None
    accel_mac_share: float = 0.0
    host_latency_share: float = 0.0
    latency_ms: float = 0.0
    compile_seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)
    constant_weights: bool = False
    stream: StreamCheck | None = None


@dataclasses.dataclass
class StreamCheck:
    """A stateful model fed its whole recording call after call, the module on its own states
    and onnxruntime on its own, as a streaming user runs them."""

    calls: int
    cosine: float  # of the first output over every call
    decisions_agree: float | None = None  # share of first-output values on the same side of the threshold
    final_state_cosine: list[float] = dataclasses.field(default_factory=list)  # each state after the last call


EVAL_FIRST_SEED = 10_000  # evaluation inputs' seeds; calibration's stay below


def check_model(
    model: CorpusModel,
    hw,
    calibration_samples: int = 16,
    eval_samples: int = 4,
    calibration_method: str | None = None,  # None: the default (codesign.pipeline.quantize_model)
    bias_correction: bool = True,
    calibration_seed: int = 0,
    compression=None,  # CompressionConfig (a --compression file's choices); None: the entry's
) -> ModelCheck:
    """Compile with calibration on realistic inputs (seeds from `calibration_seed` on), run
    `eval_samples` other ones (seeds from EVAL_FIRST_SEED on), compare with onnxruntime (float)
    and simulate (analytic model)."""
    import tempfile
    import time

    import onnx
    import tvm
    from tvm import relax

    from codesign.calibration import float_outputs, module_outputs
    from codesign.console_tables import placement_summary
    from codesign.errors import CodesignError
    from codesign.onnx_passes.quantized import is_dynamically_quantized
    from codesign.pipeline import compile_model
    from codesign.simulator.simulate import simulate_plans

    if compression is None:
        compression = model.compression_config()
    notes: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        calibration = Path(tmp) / "calibration.npz"
        if calibration_seed + calibration_samples > EVAL_FIRST_SEED:
            raise ValueError(f"calibration seeds must stay below the evaluation's ({EVAL_FIRST_SEED})")
        np.savez(calibration, **model.samples(calibration_samples, first_seed=calibration_seed))
        try:
            result = compile_model(
                model.path, hw, model.input_shapes, calibration, calibration_samples,
                warn=notes.append, input_values=model.input_values,
                calibration_method=calibration_method,
                bias_correction=bias_correction, compression=compression,
            )  # fmt: skip
        except CodesignError as err:
            return ModelCheck(model.name, False, str(err).splitlines()[0], notes=notes)
    seconds = time.perf_counter() - start
    session = onnxruntime_session(model.path)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    samples = [model.sample(EVAL_FIRST_SEED + i) for i in range(eval_samples)]
    names = [spec.name for spec in result.imported.inputs]
    float_runs = list(float_outputs(result.graph, result.imported, samples))
    if is_dynamically_quantized(onnx.load(str(model.path), load_external_data=False)):
        float_runs = _with_dynamic_rounding(model, samples, float_runs, notes)
    ours, floats, theirs = [], [], []
    for sample, float_run in zip(samples, float_runs):
        theirs.append(session.run(None, model.onnx_feed(sample, session.get_inputs())))
        ours.append(module_outputs(vm, names, sample))
        floats.append(float_run)
    # Cosine per output over all evaluation samples together (a scalar output gets a vector).
    int8_cos, top1_agreement, same_text = _agreement(model, ours, theirs)
    float_cos = output_cosines(floats, theirs)
    simulation = simulate_plans(result.lowered.plans, hw, "analytic")
    summary = placement_summary(result.lowered.plans, simulation)
    stream = check_stream(model, lambda feed: module_outputs(vm, names, feed), session) if model.stream else None
    return ModelCheck(
        model.name,
        True,
        float_cosine=float_cos,
        int8_cosine=int8_cos,
        top1_agreement=top1_agreement,
        same_text=same_text,
        accel_mac_share=summary["accel_mac_share"],
        host_latency_share=summary["host_latency_share"],
        latency_ms=1e3 * summary["latency_seconds"],
        compile_seconds=seconds,
        notes=notes,
        constant_weights=model.constant_weights,
        stream=stream,
    )


def onnxruntime_session(path: Path):
    """An onnxruntime CPU session whose threads sleep between runs. By default they spin for a
    while after each run, and on a small machine they then starve TVM's thread pool when the
    two alternate: silero-vad's module took 27 ms a call instead of 0.2 between onnxruntime runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _agreement(model: CorpusModel, ours: list, theirs: list) -> tuple[list[float], float | None, float | None]:
    """Runs against onnxruntime's float runs: the cosine of each output over every run (a scalar
    output gets a vector), and for a classifier its top-1 agreement (per step for a recogniser,
    with the share of runs whose text reads the same)."""
    cosines = output_cosines(ours, theirs)
    if not model.classifier:
        return cosines, None, None
    top1 = _top1_per_step if model.sequence else _top1
    agree = np.concatenate([top1(mine[0]) == top1(reference[0]) for mine, reference in zip(ours, theirs)])
    return cosines, float(np.mean(agree)), _same_text(ours, theirs) if model.sequence else None


@dataclasses.dataclass
class BaselineCheck:
    """onnxruntime's own static int8 quantization of a corpus model (QDQ, int8 weights per
    channel and activations per tensor, min-max ranges, the calibration inputs codesign had),
    run on the same evaluation inputs: what int8 costs the model elsewhere."""

    name: str
    quantized: bool
    blocker: str = ""
    int8_cosine: list[float] = dataclasses.field(default_factory=list)
    top1_agreement: float | None = None
    same_text: float | None = None


def check_onnxruntime_int8(
    model: CorpusModel, calibration_samples: int = 16, eval_samples: int = 4, calibration_seed: int = 0
) -> BaselineCheck:
    """The BaselineCheck of a model: quantized from the inputs check_model calibrates on (same
    seeds), compared on the ones it evaluates on."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from codesign.onnx_passes.quantized import is_quantized

    original = onnx.load(str(model.path))
    if is_quantized(original):
        return BaselineCheck(model.name, False, "already quantized")
    session = onnxruntime_session(model.path)
    seeds = range(calibration_seed, calibration_seed + calibration_samples)
    feeds = [model.onnx_feed(model.sample(seed), session.get_inputs()) for seed in seeds]
    with tempfile.TemporaryDirectory() as tmp, _quiet_onnxruntime():
        upgraded, prepared, int8_path = (Path(tmp) / f"{step}.onnx" for step in ("opset13", "prepared", "int8"))
        try:
            # Per-channel DequantizeLinear needs opset 13; its pre-pass folds batch norms into convs.
            onnx.save(_at_least_opset(original, 13), str(upgraded))
            quant_pre_process(str(upgraded), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared), str(int8_path), _FeedReader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            )  # fmt: skip
            int8_session = onnxruntime_session(int8_path)
        except Exception as err:  # noqa: BLE001 (onnxruntime's quantizer raises anything; the bench reports it)
            return BaselineCheck(model.name, False, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}")
        int8_outputs, float_outputs = [], []
        for seed in range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + eval_samples):
            sample = model.sample(seed)
            float_outputs.append(session.run(None, model.onnx_feed(sample, session.get_inputs())))
            int8_outputs.append(int8_session.run(None, model.onnx_feed(sample, int8_session.get_inputs())))
    cosines, top1_agreement, same_text = _agreement(model, int8_outputs, float_outputs)
    return BaselineCheck(model.name, True, int8_cosine=cosines, top1_agreement=top1_agreement, same_text=same_text)


def _at_least_opset(model, version: int):
    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), version)
    return onnx.version_converter.convert_version(model, version) if opset < version else model


@contextlib.contextmanager
def _quiet_onnxruntime():
    """onnxruntime's quantizer logs a line per tensor it skips (Python logging and its own logger)."""
    import logging

    import onnxruntime as ort

    logging.disable(logging.WARNING)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        ort.set_default_logger_severity(2)


class _FeedReader:
    """onnxruntime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def check_stream(model: CorpusModel, run_module, session) -> StreamCheck:
    """Feed the model's whole recording from its start, call after call, to the module
    (`run_module(feed) -> outputs`) and to onnxruntime, each carrying its own states from zeros.
    The sample's evaluation takes each call's states from onnxruntime; here the module's own
    errors accumulate, as in deployment."""
    (audio_input,) = [name for name, kind in model.inputs.items() if kind == "speech"]
    if set(model.inputs) != {audio_input, *model.stream}:
        raise ValueError(f"{model.name}: a streamed model takes one speech input and its states")
    shape = model.input_shapes[audio_input]
    audio = np.load(model.data)["audio"]
    hop = shape[-1] - model.frame_context
    calls = (audio.size - shape[-1]) // (hop * int(np.prod(shape[:-1])))
    chunks = framed_calls(audio, model.frame_context, shape, model.frame_context, calls, model.audio_scale)
    output_names = [o.name for o in session.get_outputs()]
    zeros = {name: np.zeros(model.input_shapes[name], np.float32) for name in model.stream}
    ours_state, theirs_state, ours, theirs = dict(zeros), dict(zeros), [], []
    for chunk in chunks:
        mine = dict(zip(output_names, run_module({audio_input: chunk, **ours_state})))
        feed = model.onnx_feed({audio_input: chunk, **theirs_state}, session.get_inputs())
        reference = dict(zip(output_names, session.run(None, feed)))
        ours_state = {name: mine[output].astype(np.float32) for name, output in model.stream.items()}
        theirs_state = {name: reference[output].astype(np.float32) for name, output in model.stream.items()}
        ours.append(mine[output_names[0]].ravel())
        theirs.append(reference[output_names[0]].ravel())
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    threshold = model.decision_threshold
    agree = None if threshold is None else float(np.mean((ours > threshold) == (theirs > threshold)))
    finals = [cosine(ours_state[name], theirs_state[name]) for name in model.stream]
    return StreamCheck(calls, cosine(ours, theirs), agree, finals)


def _with_dynamic_rounding(model: CorpusModel, samples, float_runs, notes: list[str]) -> list:
    """The float reference of an onnxruntime dynamically quantized model: its import with the
    activations' uint8 rounding emulated (what onnxruntime computes). The float model codesign
    compiles drops that rounding; a note gives its cosine against onnxruntime's output."""
    from codesign.calibration import float_outputs
    from codesign.graph import extract_graph
    from codesign.importer import import_onnx

    emulated = import_onnx(model.path, model.input_shapes, model.input_values, emulate_dynamic_quantization=True)
    rounded_runs = list(float_outputs(extract_graph(emulated), emulated, samples))
    unrounded = min(output_cosines(float_runs, rounded_runs))
    notes.append(
        f"float reference: onnxruntime's dynamic uint8 rounding emulated; the float model compiled "
        f"(rounding dropped; its least matching output) has cosine {unrounded:.6f} against it"
    )
    return rounded_runs


def _same_text(ours: list, theirs: list) -> float:
    """The share of inputs whose first output decodes (greedy CTC) to the same text as onnxruntime's."""
    from codesign.tuner.accuracy import ctc_greedy

    return float(np.mean([ctc_greedy(mine[0]) == ctc_greedy(reference[0]) for mine, reference in zip(ours, theirs)]))


def _top1(output: np.ndarray) -> np.ndarray:
    return output.reshape(output.shape[0], -1).argmax(-1)


def _top1_per_step(output: np.ndarray) -> np.ndarray:
    return output.reshape(-1, output.shape[-1]).argmax(-1)
