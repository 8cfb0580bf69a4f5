"""`vtc fidelity`: how far each method × ratio moves a target LLM's answers from the uncompressed run, label-free.

    videos ──decode+encode ONCE (the union of the signals every method needs)──▶ cached features
       └─▶ method none: the reference (greedy answer of N tokens per prompt, its next-token log-probabilities),
           cached on disk per (video, setup)
       └─▶ every method × ratio on the same features ──▶ token file (the engine's own `finish`) ──▶ one LLM forward
           per prompt, teacher-forced on the reference's answer ──▶ KL, agreement, flips, first divergence
       └─▶ controls at each run's ACHIEVED ratio: seeded random selection and per-frame pooling

One teacher-forced forward per file × prompt gives everything: the compressed model's distribution at every answer
position, and the first position where its argmax leaves the reference's answer, which IS where free-running greedy
decoding of the compressed input first diverges (up to there both decode the same prefix).

Methods that need their own encoder pass (a pre-encoder rule such as RLT's frame reuse) get one, and say so.
Results are appended to DIR/fidelity.jsonl as they complete, keyed by (video content, method, ratio, setup) — the
setup covers the model, the sampling, the prompts and N — so an interrupted sweep resumes where it stopped and a
method added later costs only that method.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vtc.errors import ModelError, UsageError, VtcError
from vtc.io.decode import content_hash
from vtc.io.encode import pick_device, pick_dtype
from vtc.io.store import TokenFile, load
from vtc.run.config import make_config
from vtc.run.finish import Job, Outcome, Video, finish
from vtc.run.pipeline import Engine, as_failure
from vtc.run.plan import Plan
from vtc.targets import check_target
from vtc.targets.base import TargetSpec, transformers_imports, video_token_id
from vtc.targets.encoders import open_encoder

#: generic questions about any video (the default prompt set)
DEFAULT_PROMPTS = (
    "Describe this video in detail.",
    "What is happening in this video?",
    "What objects can be seen in the video?",
    "What changes between the beginning and the end of the video?",
    "Where does this video take place?",
)
#: the controls run at each method run's achieved ratio
CONTROLS = ("random", "pool")
RESULTS = "fidelity.jsonl"
#: the method name of a video's reference record (the uncompressed run)
REFERENCE = "reference"
#: the metrics of one run, in table order
METRICS = ("kl_first", "kl_answer", "agreement", "flip_rate", "first_divergence")


# ---------------------------------------------------------------------------------------------------- metrics
def compare(ref_logits: Tensor, answer: Tensor, logits: Tensor) -> dict[str, Any]:
    """One prompt's metrics.  ref_logits, logits: [n, V] the model's logits (as it gave them) for the reference and
    the compressed run at the n answer positions (teacher-forced on `answer` [n], the reference's greedy answer);
    the distributions are their softmax, computed in float64.

    kl [n]: KL(reference ‖ compressed) per position (nats); agree [n]: the compressed argmax is the reference
    token; first_divergence: the first position where it is not (n when none: the greedy answers are equal)."""
    p = torch.log_softmax(ref_logits.double(), -1)
    q = torch.log_softmax(logits.double(), -1)
    kl = (p.exp() * (p - q)).sum(-1).clamp_min(0.0)
    agree = q.argmax(-1) == answer.long()
    miss = torch.nonzero(~agree).flatten()
    n = int(answer.numel())
    first = int(miss[0]) if miss.numel() else n
    return {"kl": kl.tolist(), "agree": agree.tolist(), "first_divergence": first, "n": n}


def summarise(per_prompt: list[dict[str, Any]]) -> dict[str, float]:
    """The run's numbers over its prompts: kl_first and kl_answer (means over prompts of the first position's KL
    and of the mean KL over the answer), agreement (fraction of all answer positions), flip_rate (fraction of
    prompts whose greedy answer changes within its n tokens), first_divergence (mean over prompts; n if none)."""
    k = len(per_prompt)
    tokens = sum(p["n"] for p in per_prompt)
    return {
        "kl_first": sum(p["kl"][0] for p in per_prompt) / k,
        "kl_answer": sum(sum(p["kl"]) / p["n"] for p in per_prompt) / k,
        "agreement": sum(sum(p["agree"]) for p in per_prompt) / tokens,
        "flip_rate": sum(p["first_divergence"] < p["n"] for p in per_prompt) / k,
        "first_divergence": sum(p["first_divergence"] for p in per_prompt) / k,
    }


# ---------------------------------------------------------------------------------------------------- the judge
@dataclass
class Reference:
    """The uncompressed run of one video: per prompt, the greedy answer [n_j] and the logits [n_j, V] (float32, as the
    model gave them) at the positions that predict it."""

    answers: list[Tensor]
    logits: list[Tensor]
    prefill_s: float = 0.0

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors = {}
        for j, (a, lg) in enumerate(zip(self.answers, self.logits, strict=True)):
            tensors[f"answer_{j}"] = a.long().contiguous()
            tensors[f"logits_{j}"] = lg.float().contiguous()
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"prompts": str(len(self.answers)), "prefill_s": str(self.prefill_s)})
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> Reference:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            k = int(meta["prompts"])
            return cls([f.get_tensor(f"answer_{j}") for j in range(k)],
                       [f.get_tensor(f"logits_{j}") for j in range(k)], float(meta["prefill_s"]))


class Judge:
    """The target LLM (the whole transformers model) and its tokenizer; one forward per file × prompt."""

    def __init__(self, spec: TargetSpec, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
        self.spec = spec
        transformers, _ = transformers_imports()
        from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        transformers.logging.set_verbosity_error()
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # no loading bar in the sweep's output
        try:
            self.model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype).to(device).eval()
        except Exception as e:
            raise ModelError(f"{folder}: transformers cannot load the model for fidelity "
                             f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}).") from None
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        try:
            self.processor: Any = AutoProcessor.from_pretrained(str(folder))
            self.tokenizer: Any = getattr(self.processor, "tokenizer", self.processor)
        except Exception:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.video_token = video_token_id(self.model)
        cfg = self.model.config
        #: placeholder tokens are no text a model answers with (a random tiny model would pick them): their logits
        #: are pushed to -1e9 at every position, so they carry no probability on either side of a comparison
        self.placeholders = sorted({self.video_token, *(int(v) for v in (
            getattr(cfg, "image_token_id", None), getattr(cfg, "image_token_index", None)) if v is not None)})
        eos: set[int] = set()
        for value in (getattr(self.tokenizer, "eos_token_id", None),
                      getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)):
            eos.update(value if isinstance(value, list) else ([] if value is None else [value]))
        self.eos = eos
        self.forwards = 0

    # -------------------------------------------------------------- prompts
    def render(self, question: str) -> tuple[str, str]:
        """The text before and after the video placeholder: the processor's chat template (a user turn with the
        video then the question, and the assistant's turn opened), or plain `<video>\\nQUESTION\\n` without one."""
        tok = self.tokenizer
        names = tok.convert_ids_to_tokens([self.video_token])
        placeholder = names[0]
        template = getattr(self.processor, "chat_template", None) if self.processor is not None else None
        if template:
            messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            if placeholder in text:
                before, _, after = text.partition(placeholder)
                for start, end in self._vision_marks():  # the block around the placeholder is the file's to write
                    if before.endswith(start) and after.startswith(end):
                        before, after = before[: -len(start)], after[len(end):]
                return before, after
        return "", f"\n{question}\n"

    def _vision_marks(self) -> list[tuple[str, str]]:
        cfg = self.model.config
        s, e = getattr(cfg, "vision_start_token_id", None), getattr(cfg, "vision_end_token_id", None)
        if s is None or e is None:
            return []
        a, b = self.tokenizer.convert_ids_to_tokens([int(s), int(e)])
        return [(a, b)]

    def prompt_ids(self, question: str, tf: TokenFile) -> list[int]:
        """Token ids of a prompt with one video placeholder, as `vtc.hf.video_inputs` takes them for `tf`'s
        family: Qwen2-style files get <vision_start><video><vision_end>; files whose consumer writes each frame's
        block itself (Qwen3-style timestamps) and LLaVA files get the placeholder alone."""
        before, after = self.render(question)
        block = [self.video_token]
        cfg = self.model.config
        start, end = getattr(cfg, "vision_start_token_id", None), getattr(cfg, "vision_end_token_id", None)
        if start is not None and end is not None and "frame_timestamps" not in (tf.meta.get("space") or {}):
            block = [int(start), self.video_token, int(end)]
        enc = self.tokenizer
        return (enc(before, add_special_tokens=False).input_ids + block
                + enc(after, add_special_tokens=False).input_ids)

    # -------------------------------------------------------------- forwards
    def inputs(self, tf: TokenFile, ids: list[int]) -> dict[str, Any]:
        """What `vtc.hf.video_inputs` gives (the run layer calls the target family's consumer itself)."""
        inputs = self.spec.hf_inputs(tf, self.model, torch.tensor(ids), ids.index(self.video_token),
                                     positions="contiguous", after_video="reference", rows=None,
                                     tokenizer=self.tokenizer)
        dev = self.model.device
        return {k: (v.to(dev) if isinstance(v, Tensor) else v) for k, v in inputs.items()}

    def greedy(self, tf: TokenFile, ids: list[int], n: int) -> list[int]:
        """Up to n greedy tokens (placeholders suppressed, stopping after an end-of-sequence token): the model's
        own `generate` with its KV cache; one full forward per token where `generate` does not take the inputs."""
        inputs = self.inputs(tf, ids)
        try:
            with torch.no_grad():
                out = self.model.generate(**inputs, max_new_tokens=n, do_sample=False, num_beams=1,
                                          suppress_tokens=self.placeholders, eos_token_id=sorted(self.eos) or None,
                                          pad_token_id=next(iter(sorted(self.eos)), 0), temperature=None,
                                          top_p=None, top_k=None)
            self.forwards += 1
            new = out[0, inputs["input_ids"].shape[-1]:] if "input_ids" in inputs else out[0]
            ans = [int(t) for t in new.tolist()]
            cut = next((i + 1 for i, t in enumerate(ans) if t in self.eos), len(ans))
            return ans[:cut]
        except Exception:  # noqa: BLE001 — a family whose inputs generate does not take: decode by forwards
            ans = []
            for _ in range(n):
                logits, _ = self.logits(tf, ids + ans)
                ans.append(int(logits[-1].argmax()))
                if ans[-1] in self.eos:
                    break
            return ans

    def logits(self, tf: TokenFile, ids: list[int], keep: int = 1) -> tuple[Tensor, float]:
        """The model's logits [keep, V] (float32, on the CPU; placeholder tokens at -1e9) at the last `keep`
        positions of the expanded sequence (`logits_to_keep`: a real vocabulary over a whole video would take
        gigabytes), and the forward's seconds."""
        inputs = self.inputs(tf, ids)
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model(**inputs, logits_to_keep=keep).logits[0, -keep:]
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        self.forwards += 1
        out = out.float().cpu()
        out[:, self.placeholders] = -1e9
        return out, dt

    def answer_logits(self, tf: TokenFile, prompt: list[int], answer: Tensor) -> tuple[Tensor, float]:
        """Teacher-forced: the logits [n, V] at the n positions that predict `answer` [n], one forward."""
        n = int(answer.numel())
        return self.logits(tf, prompt + answer[: n - 1].tolist(), keep=n)

    def reference(self, tf: TokenFile, prompts: list[list[int]], n: int) -> Reference:
        """Greedy-decode up to n tokens per prompt (`greedy`), then the teacher-forced logits of that answer; where
        the teacher-forced argmax disagrees with the decoded token (a numerical near-tie between the cached and the
        full forward) the answer takes the teacher-forced token and stops there, so the reference agrees with
        itself."""
        answers, lps, total = [], [], 0.0
        for ids in prompts:
            a = torch.tensor(self.greedy(tf, ids, n), dtype=torch.long)
            lp, dt = self.answer_logits(tf, ids, a)
            total += dt
            same = lp.argmax(-1) == a
            keep = int(torch.nonzero(~same).flatten()[0]) + 1 if not bool(same.all()) else a.numel()
            if keep < a.numel():  # the tie-broken token is the last one scored
                a, lp = lp.argmax(-1)[:keep], lp[:keep]
            answers.append(a)
            lps.append(lp)
        return Reference(answers, lps, total / max(1, len(prompts)))


# ---------------------------------------------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class SharedPass(Plan):
    """The plan of the one encoder pass every post-encoder method shares: the union of their signals, views and
    extra pictures (the method of the plan itself is `none`)."""

    pixels: bool = False

    @property
    def keep_pixels(self) -> bool:
        return self.pixels


class SweepEngine(Engine):
    """The streaming engine, finishing each encoded video with a callback (every method × ratio on the same
    features) instead of one plan."""

    def __init__(self, plan: Plan, encoder: Any, sweep: Callable[[Video], Outcome], **kw: Any) -> None:
        super().__init__(plan, encoder, **kw)
        self.sweep = sweep

    def _finish(self, video: Video) -> Outcome:
        try:
            return self.sweep(video)
        finally:
            video.close()


@dataclass
class Run:
    """One method × ratio of the sweep (or a control)."""

    method: str
    ratio: float | None
    plan: Plan
    kind: str = "method"  # "method", "control" or "reference"

    @property
    def key(self) -> tuple[str, float | None]:
        return (self.method, None if self.ratio is None else round(float(self.ratio), 6))

    @property
    def ident(self) -> str:
        """The method as a result's key names it: label and resolved parameters (other parameters, other runs)."""
        return f"{self.method} {json.dumps(self.plan.params, sort_keys=True, default=str)}"


@dataclass
class FidelitySummary:
    """What `vtc.fidelity` returns: every record, the table over videos, the Pareto front in words, counts."""

    records: list[dict[str, Any]]
    table: list[dict[str, Any]]
    pareto: list[str]
    outdir: Path
    videos: int
    computed: int = 0
    reused: int = 0
    encoder_passes: dict[str, int] = field(default_factory=dict)
    frames_encoded: int = 0
    llm_forwards: int = 0
    notes: list[str] = field(default_factory=list)
    #: videos that failed (decoding, encoding, a method or the model), with the error
    failed: dict[str, str] = field(default_factory=dict)
    wall: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"videos": self.videos, "computed": self.computed, "reused": self.reused,
                "encoder_passes": self.encoder_passes, "frames_encoded": self.frames_encoded,
                "llm_forwards": self.llm_forwards, "notes": self.notes, "failed": self.failed,
                "wall_s": round(self.wall, 3),
                "table": self.table, "pareto": self.pareto, "records": self.records,
                "outdir": str(self.outdir)}


def read_prompts(prompts: str | os.PathLike[str] | Sequence[str] | None) -> list[str]:
    """The prompt set: the default questions, a list, or a text file (one prompt a line; blank lines and lines
    starting with # are skipped)."""
    if prompts is None:
        return list(DEFAULT_PROMPTS)
    if isinstance(prompts, (str, os.PathLike)):
        path = Path(prompts)
        if not path.is_file():
            raise UsageError(f"--prompts {path}: no such file (one prompt a line).")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--prompts {path}: cannot read it as UTF-8 text ({e}).") from None
        out = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    else:
        out = [str(p).strip() for p in prompts if str(p).strip()]
    if not out:
        raise UsageError("the prompt set is empty; give at least one question.")
    return out


def parse_list(text: str | Sequence[Any], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else [str(s).strip() for s in text]
    items = [s for s in items if s]
    if not items:
        raise UsageError(f"{what} is empty.")
    return items


def parse_ratios(text: str | Sequence[float]) -> list[float]:
    out = []
    for s in parse_list(text if isinstance(text, str) else [str(r) for r in text], "--ratios"):
        try:
            r = float(s)
        except ValueError:
            raise UsageError(f"--ratios takes numbers in (0, 1] separated by commas, not '{s}'.") from None
        if not (math.isfinite(r) and 0.0 < r <= 1.0):
            raise UsageError(f"--ratios: {s} is not in (0, 1] (the fraction of tokens kept).")
        out.append(r)
    return sorted(set(out))


def _key(video: str, kind: str, method: str, ratio: float | None, setup: str) -> str:
    """A result's identity: the video's content, what kind of run (method, control, reference), the method and
    ratio, and the setup (a control `pool` at 0.25 is not the method `pool` at 0.25)."""
    return json.dumps([video, kind, method, None if ratio is None else round(float(ratio), 6), setup])


def _setup_hash(options: dict[str, Any], ckpt_config: dict[str, Any], prompts: list[str], n: int,
                seed: int) -> str:
    """What decides every number besides the video and the method: model, sampling, prompts, N, control seed."""
    keep = {k: options.get(k) for k in ("target", "target_model", "frames", "fps", "every", "dtype", "dtype_out")}
    blob = json.dumps({"options": keep, "config": ckpt_config, "prompts": prompts, "n": n, "seed": seed},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_fidelity(
    videos: Sequence[str | os.PathLike[str]],
    outdir: str | os.PathLike[str],
    *,
    target: str | None,
    target_model: str | None,
    methods: str | Sequence[str] = ("fastvid", "dycoke", "divprune"),
    ratios: str | Sequence[float] = (0.1, 0.25, 0.5),
    prompts: str | os.PathLike[str] | Sequence[str] | None = None,
    answer_tokens: int = 8,
    seed: int = 0,
    controls: bool = True,
    params: dict[str, dict[str, Any]] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    **options: Any,
) -> FidelitySummary:
    """Measure every method × ratio on every video against the uncompressed run; see the module docstring.

    `options`: the sampling and encoder options of `vtc.compress` (frames, fps, every, device, dtype, batch_size,
    dtype_out [default float32 here: the tokens the LLM sees are not rounded], memory_budget).
    `params`: method parameters per method name. Writes OUTDIR/fidelity.jsonl (resume), fidelity.json,
    fidelity.csv and OUTDIR/reference/*.safetensors (the cached reference distributions).
    """
    t_start = time.perf_counter()
    emit = on_event or (lambda kind, data: None)
    if target is None or not target_model:
        raise UsageError("vtc fidelity measures a target LLM's answers: give --target and --target-model (the "
                         "encoder-space proxies of coverage and attention error are not measured by vtc).")
    if isinstance(answer_tokens, bool) or not isinstance(answer_tokens, int) or not 1 <= answer_tokens <= 4096:
        raise UsageError(f"--answer-tokens must be an integer in [1, 4096], not {answer_tokens!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed must be an integer ≥ 0, not {seed!r}.")
    method_names = parse_list(methods, "--methods")
    ratio_list = parse_ratios(ratios)
    questions = read_prompts(prompts)
    paths = [Path(v) for v in videos]
    if not paths:
        raise UsageError("give at least one video.")
    for p in paths:
        if not p.is_file():
            raise UsageError(f"{p}: no such video file.")
    common = {"dtype_out": "float32", **{k: v for k, v in options.items() if v is not None},
              "target": target, "target_model": target_model}
    params = params or {}

    def plan(method: str, ratio: float | None, control: dict[str, Any] | None = None) -> Plan:
        """A run's plan: the user's parameters for a method, a control's own (never the user's)."""
        p = control if control is not None else params.get(method.partition(":")[0], {})
        return Plan.make(make_config(None, method=method, ratio=ratio, params=p, **common))

    # every plan is validated before a model is loaded
    reference_plan = plan("none", None)
    runs: list[Run] = []
    for m in method_names:
        probe_plan = plan(m, ratio_list[0])
        if probe_plan.spec.name == "none":  # keeps everything whatever the ratio: one run
            runs.append(Run(probe_plan.method_label, None, probe_plan))
            continue
        runs.extend(Run(probe_plan.method_label, r, plan(m, r)) for r in ratio_list)
    seen: set[tuple[str, float | None]] = set()
    runs = [r for r in runs if not (r.key in seen or seen.add(r.key))]  # type: ignore[func-returns-value]
    enc_cfg = reference_plan.cfg.encoder
    _, ckpt = check_target(enc_cfg)
    setup = _setup_hash(common, ckpt.config, questions, answer_tokens, seed)
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file; fidelity writes a directory.")
    (out / "reference").mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS
    done: dict[str, dict[str, Any]] = {}
    if results_path.exists():
        for line in results_path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rec = json.loads(line)
                if isinstance(rec, dict) and rec.get("setup") == setup and "key" in rec:
                    done[rec["key"]] = rec

    shared = [r for r in runs if r.plan.pre_encoder is None and r.plan.spec.in_encoder is None]
    own = [r for r in runs if r not in shared]
    notes = [f"{r.method} at {r.ratio}: needs its own encoder pass (a step before or inside the encoder), run "
             f"separately" for r in own]
    for n_ in notes:
        emit("note", {"message": n_})
    hashes = {str(p): content_hash(p) for p in paths}

    def control_runs(achieved: float) -> list[Run]:
        if not controls or achieved >= 1.0:
            return []
        r = round(achieved, 6)
        return [Run("random", r, plan("random", r, {"seed": seed}), "control"),
                Run("pool", r, plan("pool", r, {}), "control")]

    def missing(path: Path) -> tuple[list[Run], bool]:
        """The runs of a video still to compute (controls of done runs included), and whether its reference is."""
        vid = hashes[str(path)]
        todo: list[Run] = []
        for r in runs:
            rec = done.get(_key(vid, r.kind, r.ident, r.ratio, setup))
            if rec is None:
                todo.append(r)
            else:
                todo.extend(c for c in control_runs(rec["ratio_achieved"])
                            if _key(vid, c.kind, c.ident, c.ratio, setup) not in done)
        ref = out / "reference" / f"{vid[:24]}-{setup}.safetensors"
        return todo, ref.exists()

    total = len(paths) * len(runs)
    already = sum(1 for p in paths for r in runs if _key(hashes[str(p)], r.kind, r.ident, r.ratio, setup) in done)
    emit("start", {"videos": len(paths), "runs": len(runs), "total": total, "done": already,
                   "controls": list(CONTROLS) if controls else []})
    summary = FidelitySummary([], [], [], out, len(paths), notes=notes)
    todo_videos = [p for p in paths if missing(p)[0] or not missing(p)[1]]
    summary.reused = total - sum(len([r for r in missing(p)[0] if r.kind == "method"]) for p in paths)
    if todo_videos:
        _sweep(todo_videos, shared, own, reference_plan, questions, answer_tokens, setup, hashes, done, results_path,
               out, missing, control_runs, summary, emit)
    # the records of this call's videos, runs and their controls, in a stable order
    wanted = {hashes[str(p)]: str(p) for p in paths}
    recs = []
    for vid, name in wanted.items():
        mine = [done.get(_key(vid, "reference", REFERENCE, None, setup))]
        for r in runs:
            rec = done.get(_key(vid, r.kind, r.ident, r.ratio, setup))
            mine.append(rec)
            if rec is not None:
                mine += [done.get(_key(vid, c.kind, c.ident, c.ratio, setup)) for c in control_runs(
                    rec["ratio_achieved"])]
        for rec in mine:
            if rec is not None and rec not in recs:
                rec["video"] = name
                recs.append(rec)
    recs.sort(key=lambda r: (r["video"], r["kind"] != "reference", r["kind"], r["method"], r["ratio"] or 0))
    summary.records = recs
    summary.table = table(recs)
    summary.pareto = pareto_words(summary.table, ratio_list)
    summary.wall = time.perf_counter() - t_start
    write_outputs(summary)
    return summary


def _sweep(paths: list[Path], shared: list[Run], own: list[Run], reference_plan: Plan, questions: list[str], n: int,
           setup: str, hashes: dict[str, str],
           done: dict[str, dict[str, Any]], results_path: Path, out: Path,
           missing: Callable[[Path], tuple[list[Run], bool]], control_runs: Callable[[float], list[Run]],
           summary: FidelitySummary, emit: Callable[[str, dict[str, Any]], None]) -> None:
    encoder = open_encoder(reference_plan.cfg.encoder, text=False)
    enc_cfg = reference_plan.cfg.encoder
    device = pick_device(enc_cfg.device)
    spec, ckpt = check_target(enc_cfg)
    judge = Judge(spec, ckpt.path, device, pick_dtype(device, enc_cfg.dtype))
    tmp = Path(tempfile.mkdtemp(prefix="vtc-fidelity-", dir=out))
    counter = {"n": 0}

    def measure(video: Video, run: Run, ref: Reference, prompt_ids: list[list[int]], vid: str) -> dict[str, Any]:
        counter["n"] += 1
        path = tmp / f"{counter['n']}.safetensors"
        video.job = Job(video.job.index, video.job.input, path)
        outcome = finish(run.plan, encoder, video, None, close=False)
        if not outcome.ok:
            raise outcome.error or VtcError(f"{video.job.input}: {run.method} failed")
        tf = load(path)
        per, prefill = [], 0.0
        for ids, ans, rlp in zip(prompt_ids, ref.answers, ref.logits, strict=True):
            lp, dt = judge.answer_logits(tf, ids, ans)
            prefill += dt
            per.append(compare(rlp, ans, lp))
        path.unlink(missing_ok=True)
        return {"key": _key(vid, run.kind, run.ident, run.ratio, setup), "setup": setup,
               "video": str(video.job.input), "video_sha256": vid, "method": run.method, "ratio": run.ratio,
               "kind": run.kind, "params": run.plan.params,
               "ratio_achieved": round(outcome.ratio_achieved, 6), "tokens": outcome.num_tokens,
               "source_tokens": outcome.num_source_tokens, "compress_s": outcome.timings.get("compress", 0.0),
               "prefill_s": prefill / len(per), **summarise(per),
               "per_prompt": [{"kl": p["kl"], "first_divergence": p["first_divergence"], "n": p["n"]} for p in per]}

    def record(rec: dict[str, Any]) -> None:
        done[rec["key"]] = rec
        with open(results_path, "a", encoding="utf-8") as f:  # appended as it completes: the resume point
            f.write(json.dumps(rec) + "\n")

    def sweep_video(video: Video, todo: list[Run], with_controls: bool) -> Outcome:
        """Every run of `todo` on this encoded video; the reference first (read from its cache, or computed on
        the uncompressed file, which also gives the prompts' ids in this video's token space)."""
        path = video.job.input
        vid = hashes[str(path)]
        ref_path = out / "reference" / f"{vid[:24]}-{setup}.safetensors"
        counter["n"] += 1
        ref_file = tmp / f"ref{counter['n']}.safetensors"
        video.job = Job(video.job.index, path, ref_file)
        outcome = finish(reference_plan, encoder, video, None, close=False)
        if not outcome.ok:
            raise outcome.error or VtcError(f"{path}: the uncompressed run failed")
        tf = load(ref_file)
        prompt_ids = [judge.prompt_ids(q, tf) for q in questions]
        if ref_path.exists():
            ref = Reference.read(ref_path)
        else:
            ref = judge.reference(tf, prompt_ids, n)
            ref.save(ref_path)
            emit("reference", {"video": str(path)})
        ref_file.unlink(missing_ok=True)
        key = _key(vid, "reference", REFERENCE, None, setup)
        if key not in done:
            record({"key": key, "setup": setup, "video": str(path), "video_sha256": vid, "method": REFERENCE,
                    "ratio": None, "kind": "reference", "ratio_achieved": 1.0, "tokens": outcome.num_tokens,
                    "source_tokens": outcome.num_source_tokens, "compress_s": outcome.timings.get("compress", 0.0),
                    "prefill_s": ref.prefill_s, "prompts": questions,
                    "answers": [judge.tokenizer.decode(a.tolist()) for a in ref.answers]})
        queue = list(todo)
        while queue:
            run = queue.pop(0)
            if _key(vid, run.kind, run.ident, run.ratio, setup) in done:
                continue
            rec = measure(video, run, ref, prompt_ids, vid)
            record(rec)
            summary.computed += run.kind == "method"
            emit("run", {"video": str(path), "method": run.method, "ratio": run.ratio, "kind": run.kind,
                         "kl_answer": rec["kl_answer"]})
            if run.kind == "method" and with_controls:
                queue.extend(c for c in control_runs(rec["ratio_achieved"])
                             if _key(vid, c.kind, c.ident, c.ratio, setup) not in done)
        return Outcome(video.job, True, None)

    own_keys = {r.key for r in own}
    union = frozenset().union(*(r.plan.signals for r in shared)) | reference_plan.signals
    base = {f.name: getattr(reference_plan, f.name) for f in dataclasses.fields(Plan)}
    base["signals"] = union
    shared_plan = SharedPass(**base, pixels=any(r.plan.keep_pixels for r in shared))

    def shared_pass(videos: list[Path]) -> None:
        """One decode + encode per video for every post-encoder method (and every control)."""
        todo_of = {str(p): [r for r in missing(p)[0] if r.key not in own_keys] for p in videos}
        _drive(SweepEngine(shared_plan, encoder, lambda v: sweep_video(v, todo_of[str(v.job.input)], True),
                           decode_workers=1), videos, summary)

    try:
        shared_pass(paths)
        for r in own:  # one engine pass per run that needs its own, on the videos that still miss it
            need = [p for p in paths if _key(hashes[str(p)], r.kind, r.ident, r.ratio, setup) not in done]
            if need:
                _drive(SweepEngine(r.plan, encoder, lambda v, r=r: sweep_video(v, [r], False), decode_workers=1),
                       need, summary)
        need = [p for p in paths if missing(p)[0]]  # the controls of those runs: on the shared features
        if own and need:
            shared_pass(need)
    finally:
        summary.llm_forwards += judge.forwards
        for f in tmp.glob("*"):
            f.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            tmp.rmdir()


def _drive(engine: SweepEngine, paths: list[Path], summary: FidelitySummary) -> None:
    frames_before = engine.frames_encoded
    jobs = [Job(i, p, p) for i, p in enumerate(paths)]
    for outcome in engine.run(jobs):
        if not outcome.ok:  # this video's failure is recorded; the others go on (its done runs stay done)
            err = outcome.error or as_failure(outcome.job, RuntimeError("failed"))
            summary.failed[str(outcome.job.input)] = str(err)
            continue
        summary.encoder_passes[str(outcome.job.input)] = summary.encoder_passes.get(str(outcome.job.input), 0) + 1
    summary.frames_encoded += engine.frames_encoded - frames_before


# ---------------------------------------------------------------------------------------------------- outputs
def table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method × requested ratio (means over videos), with its controls' KL at the achieved ratio."""
    by: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] == "method":
            by.setdefault((r["method"], r["ratio"]), []).append(r)
    ctl = {(r["video_sha256"], r["method"], r["ratio"]): r for r in records if r["kind"] == "control"}
    rows = []
    for (method, ratio), rs in by.items():
        row: dict[str, Any] = {"method": method, "ratio": ratio, "videos": len(rs)}
        for k in ("ratio_achieved", *METRICS, "compress_s", "prefill_s"):
            row[k] = sum(r[k] for r in rs) / len(rs)
        for c in CONTROLS:
            found = [ctl.get((r["video_sha256"], c, round(r["ratio_achieved"], 6))) for r in rs]
            have = [f for f in found if f is not None]
            row[f"{c}_kl_answer"] = sum(f["kl_answer"] for f in have) / len(have) if len(have) == len(rs) else None
            row[f"{c}_agreement"] = sum(f["agreement"] for f in have) / len(have) if len(have) == len(rs) else None
        rows.append(row)
    rows.sort(key=lambda r: (r["ratio"] if r["ratio"] is not None else 2.0, r["kl_answer"]))
    return rows


def pareto_words(rows: list[dict[str, Any]], ratios: list[float]) -> list[str]:
    """The best method under each kept-fraction budget, in words, and the Pareto front (kept fraction vs KL)."""
    lines = []
    for budget in ratios:
        fit = [r for r in rows if r["ratio_achieved"] <= budget + 1e-9]
        if not fit:
            continue
        best = min(fit, key=lambda r: r["kl_answer"])
        ctl = [f"{c} {best[f'{c}_kl_answer']:.4f}" for c in CONTROLS if best.get(f"{c}_kl_answer") is not None]
        beats = ""
        if ctl:
            worse = [c for c in CONTROLS if best.get(f"{c}_kl_answer") is not None
                     and best[f"{c}_kl_answer"] < best["kl_answer"]]
            beats = (f"; controls at its kept fraction: {', '.join(ctl)}"
                     + (f" — {' and '.join(worse)} did better" if worse else ""))
        lines.append(f"at ≤ {100 * budget:g} % kept, {best['method']} (ratio {best['ratio']}, "
                     f"{100 * best['ratio_achieved']:.1f} % kept) is best on these {best['videos']} video"
                     f"{'s' if best['videos'] != 1 else ''}: KL {best['kl_answer']:.4f}, agreement "
                     f"{100 * best['agreement']:.1f} %{beats}")
    front, best_kl = [], math.inf
    for r in sorted(rows, key=lambda r: (r["ratio_achieved"], r["kl_answer"])):
        if r["kl_answer"] < best_kl:
            front.append(r["method"] if r["ratio"] is None else f"{r['method']}@{r['ratio']:g}")
            best_kl = r["kl_answer"]
    if front:
        lines.append("Pareto front (fewer tokens kept vs lower KL): " + ", ".join(front))
    return lines


CSV_FIELDS = ("video", "method", "ratio", "kind", "ratio_achieved", "tokens", "source_tokens", *METRICS,
              "compress_s", "prefill_s")


def write_outputs(summary: FidelitySummary) -> None:
    """fidelity.json (everything) and fidelity.csv (one row per run), written atomically."""
    out = summary.outdir
    blob = json.dumps(summary.as_dict(), indent=2, default=str)
    tmp = out / "fidelity.json.tmp"
    tmp.write_text(blob, encoding="utf-8")
    os.replace(tmp, out / "fidelity.json")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in summary.records:
        w.writerow({k: r.get(k) for k in CSV_FIELDS})
    tmp = out / "fidelity.csv.tmp"
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, out / "fidelity.csv")


def iter_rows(summary: FidelitySummary) -> Iterator[list[str]]:
    """The terminal table's cells (strings), header first."""
    yield ["method", "ratio", "kept %", "KL first", "KL answer", "agree %", "flips %", "1st div", "random KL",
           "pool KL", "compress ms", "prefill ms"]
    for r in summary.table:
        def f(v: Any, fmt: str) -> str:
            return "—" if v is None else format(v, fmt)

        yield [r["method"], "—" if r["ratio"] is None else f"{r['ratio']:g}", f(100 * r["ratio_achieved"], ".1f"),
               f(r["kl_first"], ".4f"), f(r["kl_answer"], ".4f"), f(100 * r["agreement"], ".1f"),
               f(100 * r["flip_rate"], ".0f"), f(r["first_divergence"], ".2f"), f(r.get("random_kl_answer"), ".4f"),
               f(r.get("pool_kl_answer"), ".4f"), f(1000 * r["compress_s"], ".1f"), f(1000 * r["prefill_s"], ".1f")]
