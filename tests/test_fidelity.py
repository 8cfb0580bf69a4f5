"""`vtc fidelity` on tiny random-weight targets loaded through the path a real checkpoint takes.

The metrics are checked against a hand computation: token files written by `vtc compress`, the model's own
forward on `vtc.hf.video_inputs`, greedy decoding by hand, and torch's `kl_div`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("transformers")

from transformers import AutoModelForImageTextToText  # noqa: E402

import vtc  # noqa: E402
import vtc.hf  # noqa: E402
from vtc.cli import app  # noqa: E402
from vtc.errors import UsageError  # noqa: E402
from vtc.run import fidelity as fid  # noqa: E402
from vtc.targets.base import TargetEncoder  # noqa: E402
from vtc.testing import (  # noqa: E402
    TINY_LLAVA_IMAGE_TOKEN,
    TINY_LLAVA_VIDEO_TOKEN,
    TINY_QWEN_VISION_END,
    TINY_QWEN_VISION_START,
    tiny_llava_onevision,
    tiny_qwen2_5_vl,
    tiny_qwen3_vl,
    tiny_tokenizer,
)

runner = CliRunner()
PROMPTS = ["What is it?", "Describe the video."]


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llava_onevision(tmp_path_factory.mktemp("fid-llava") / "llava")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen2_5_vl(tmp_path_factory.mktemp("fid-qwen") / "qwen")


def sweep(out: Path, clips: list[Path], ckpt: Path, target: str = "llava-onevision", **kw: object
          ) -> fid.FidelitySummary:
    args: dict = dict(methods="uniform", ratios="0.5", prompts=PROMPTS, answer_tokens=3, frames=4, controls=False)
    args.update(kw)
    return vtc.fidelity(clips, out, target=target, target_model=str(ckpt), **args)


def method_records(s: fid.FidelitySummary) -> list[dict]:
    return [r for r in s.records if r["kind"] == "method"]


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen3_vl(tmp_path_factory.mktemp("fid-qwen3") / "qwen3")


TARGET = {"llava": "llava-onevision", "qwen": "qwen2.5-vl", "qwen3": "qwen3-vl"}


@pytest.mark.parametrize("family", ["llava", "qwen", "qwen3"])
def test_none_is_the_reference(tmp_path: Path, clip_path: Path, family: str, request: pytest.FixtureRequest
                               ) -> None:
    ckpt = request.getfixturevalue(family)
    target = TARGET[family]
    s = sweep(tmp_path / "out", [clip_path], ckpt, target, methods="none")
    (rec,) = method_records(s)
    assert rec["method"] == "none" and rec["ratio_achieved"] == 1.0
    assert rec["kl_first"] == 0.0 and rec["kl_answer"] == 0.0
    assert rec["agreement"] == 1.0 and rec["flip_rate"] == 0.0
    assert all(p["first_divergence"] == p["n"] for p in rec["per_prompt"])


def hand_ids(family: str, question: str) -> list[int]:
    """The prompt as the tiny checkpoints (no chat template) are fed: the video block, then the question."""
    tok = tiny_tokenizer()
    block = [TINY_LLAVA_VIDEO_TOKEN] if family == "llava" else \
        [TINY_QWEN_VISION_START, TINY_LLAVA_VIDEO_TOKEN, TINY_QWEN_VISION_END]
    return block + tok(f"\n{question}\n", add_special_tokens=False).input_ids


def cli_compress(tmp_path: Path, clip: Path, ckpt: Path, target: str, method: str, *extra: str) -> vtc.TokenFile:
    out = tmp_path / f"{method}.safetensors"
    r = runner.invoke(app, ["compress", str(clip), "-o", str(out), "--target", target, "--target-model", str(ckpt),
                            "--method", method, "--frames", "4", "--dtype-out", "float32", *extra])
    assert r.exit_code == 0, r.output
    return vtc.load(out)


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_metrics_equal_a_hand_computation(tmp_path: Path, clip_path: Path, family: str,
                                          request: pytest.FixtureRequest) -> None:
    ckpt = request.getfixturevalue(family)
    target = "llava-onevision" if family == "llava" else "qwen2.5-vl"
    n = 4
    s = sweep(tmp_path / "out", [clip_path], ckpt, target, methods="uniform", ratios="0.25", answer_tokens=n)
    (rec,) = method_records(s)
    model = AutoModelForImageTextToText.from_pretrained(ckpt).eval()
    full = cli_compress(tmp_path, clip_path, ckpt, target, "none")
    kept = cli_compress(tmp_path, clip_path, ckpt, target, "uniform", "--ratio", "0.25")
    assert rec["ratio_achieved"] == pytest.approx(kept.meta["ratio_achieved"])
    assert rec["tokens"] == kept.tokens.shape[0]

    def logits(f: vtc.TokenFile, ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            out = model(**vtc.hf.video_inputs(f, model, ids)).logits[0].double()
        out[:, [TINY_LLAVA_IMAGE_TOKEN, TINY_LLAVA_VIDEO_TOKEN]] = -1e9  # placeholders are no answer
        return out

    (ref_file,) = (tmp_path / "out" / "reference").glob("*.safetensors")
    cached = fid.Reference.read(ref_file)
    agreed = scored = 0
    for j, question in enumerate(PROMPTS):
        ids = hand_ids(family, question)
        answer: list[int] = []
        for _ in range(n):  # greedy decoding of the uncompressed video, one full forward per token
            answer.append(int(logits(full, ids + answer)[-1].argmax()))
        # the sweep decodes with the model's KV cache: a near-tie may end its answer early, never change it
        got_answer = cached.answers[j].tolist()
        assert 1 <= len(got_answer) <= n and got_answer == answer[: len(got_answer)]
        n = len(got_answer)
        answer = got_answer
        p = torch.log_softmax(logits(full, ids + answer[:-1])[-n:], -1)
        q = torch.log_softmax(logits(kept, ids + answer[:-1])[-n:], -1)
        kl = torch.stack([torch.nn.functional.kl_div(q[i], p[i], log_target=True, reduction="sum") for i in range(n)])
        got = rec["per_prompt"][j]
        # the same float32 logits on both sides, softmax and KL in float64: only the summation order differs
        # (a few float64 ulps of log V ≈ 6 per term)
        assert torch.allclose(torch.tensor(got["kl"], dtype=torch.float64), kl, rtol=1e-9, atol=1e-12)
        agree = (q.argmax(-1) == torch.tensor(answer)).tolist()
        agreed, scored = agreed + sum(agree), scored + n
        first = agree.index(False) if False in agree else n
        assert got["first_divergence"] == first
        # free-running greedy decoding of the compressed video diverges exactly there
        free: list[int] = []
        for _ in range(n):
            free.append(int(logits(kept, ids + free)[-1].argmax()))
        assert next((i for i in range(n) if free[i] != answer[i]), n) == first
        n = 4
    per = rec["per_prompt"]
    assert rec["kl_first"] == pytest.approx(sum(p["kl"][0] for p in per) / 2, rel=1e-12)
    assert rec["kl_answer"] == pytest.approx(sum(sum(p["kl"]) / p["n"] for p in per) / 2, rel=1e-12)
    assert rec["flip_rate"] == sum(p["first_divergence"] < p["n"] for p in per) / 2
    assert rec["agreement"] == agreed / scored
    assert rec["first_divergence"] == sum(p["first_divergence"] for p in per) / 2


def test_random_control_is_seeded() -> None:
    x = torch.randn(4, 36, 8)
    a = vtc.compress_features(x, method="random", ratio=0.3, params={"seed": 3})
    b = vtc.compress_features(x, method="random", ratio=0.3, params={"seed": 3})
    c = vtc.compress_features(torch.randn(4, 36, 8), method="random", ratio=0.3, params={"seed": 3})
    d = vtc.compress_features(x, method="random", ratio=0.3, params={"seed": 4})
    assert torch.equal(a.reduction.rep, b.reduction.rep) and torch.equal(a.reduction.rep, c.reduction.rep)
    assert not torch.equal(a.reduction.rep, d.reduction.rep)
    rep = a.reduction.rep
    assert rep.numel() == round(0.3 * 4 * 36) and torch.equal(rep, rep.unique())  # sorted, no repeats
    assert torch.equal(a.tokens, x.reshape(-1, 8)[rep])


def test_controls_run_at_the_achieved_ratio_and_repeat(tmp_path: Path, clip_path: Path, llava: Path) -> None:
    runs = [sweep(tmp_path / d, [clip_path], llava, methods="dycoke", ratios="0.3", controls=True, seed=5)
            for d in ("a", "b")]
    recs = [{(r["method"], r["kind"]): r for r in s.records} for s in runs]
    achieved = recs[0][("dycoke", "method")]["ratio_achieved"]
    for c in fid.CONTROLS:
        ctl = recs[0][(c, "control")]
        assert ctl["ratio"] == pytest.approx(achieved)
        assert ctl["per_prompt"] == recs[1][(c, "control")]["per_prompt"]
    rnd = recs[0][("random", "control")]
    assert rnd["tokens"] == round(achieved * rnd["source_tokens"])
    (row,) = runs[0].table
    assert row["random_kl_answer"] == rnd["kl_answer"] and row["pool_kl_answer"] == recs[0][("pool", "control")][
        "kl_answer"]


class Counter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frames = 0
        self.forwards = 0
        encode, logits = TargetEncoder.encode_pixels, fid.Judge.logits

        def count_encode(enc, pixels, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            self.frames += int(pixels.shape[0])
            return encode(enc, pixels, *a, **k)

        def count_logits(judge, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            self.forwards += 1
            return logits(judge, *a, **k)

        monkeypatch.setattr(TargetEncoder, "encode_pixels", count_encode)
        monkeypatch.setattr(fid.Judge, "logits", count_logits)


def test_encoder_runs_once_per_video(tmp_path: Path, clip_path: Path, silent_clip: Path, llava: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    count = Counter(monkeypatch)
    s = sweep(tmp_path / "out", [clip_path, silent_clip], llava, methods="uniform,divprune,fastvid",
              ratios="0.25,0.5", controls=True)
    assert len(method_records(s)) == 12
    assert count.frames == 2 * 4  # 4 sampled frames of each video, encoded once for 6 runs and their controls
    assert s.encoder_passes == {str(clip_path): 1, str(silent_clip): 1} and s.frames_encoded == 8


def test_a_sweep_resumes(tmp_path: Path, clip_path: Path, llava: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    kw = dict(methods="uniform,pool", ratios="0.25,0.5", controls=True)
    first = sweep(out, [clip_path], llava, **kw)
    assert first.computed == 4 and first.reused == 0
    count = Counter(monkeypatch)
    again = sweep(out, [clip_path], llava, **kw)
    assert (again.computed, again.reused, count.frames, count.forwards) == (0, 4, 0, 0)
    assert [r["key"] for r in again.records] == [r["key"] for r in first.records]
    # interrupted after the reference and two runs: the rest is computed, the cached reference is not
    lines = (out / fid.RESULTS).read_text().splitlines()
    kinds = [json.loads(x)["kind"] for x in lines]
    keep = kinds.index("method", kinds.index("method") + 1) + 1
    (out / fid.RESULTS).write_text("\n".join(lines[:keep]) + "\n")
    done_methods = sum(k == "method" for k in kinds[:keep])
    resumed = sweep(out, [clip_path], llava, **kw)
    assert resumed.computed == 4 - done_methods and resumed.reused == done_methods
    redone = len(resumed.records) - keep  # runs and controls computed again: one forward per prompt each
    assert count.forwards == redone * len(PROMPTS)
    assert {r["key"]: r.get("kl_answer") for r in resumed.records} == {r["key"]: r.get("kl_answer")
                                                                    for r in first.records}
    # other parameters of one method: only that method's runs are computed again
    pooled = sweep(out, [clip_path], llava, **kw, params={"pool": {"mode": "average"}})
    assert pooled.computed == 2 and pooled.reused == 2
    assert {r["params"].get("mode") for r in pooled.records if r["kind"] == "method" and r["method"] == "pool"} == {
        "average"}
    # another prompt set is another setup: nothing is reused
    other = sweep(out, [clip_path], llava, **{**kw, "prompts": ["Why?"]})
    assert other.computed == 4


def test_cli_table_json_csv_and_refusal(tmp_path: Path, clip_path: Path, llava: Path) -> None:
    prompts = tmp_path / "q.txt"
    prompts.write_text("# questions\nWhat is it?\n\nWhere?\n")
    out = tmp_path / "out"
    r = runner.invoke(app, ["fidelity", str(clip_path), "--target", "llava-onevision", "--target-model", str(llava),
                            "--methods", "uniform,none", "--ratios", "0.5", "--prompts", str(prompts), "--frames", "4",
                            "--answer-tokens", "2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "uniform" in r.output and "is best on these 1 video" in r.output and "Loading" not in r.output
    data = json.loads((out / "fidelity.json").read_text())
    assert {row["method"] for row in data["table"]} == {"uniform", "none"}
    ref = next(x for x in data["records"] if x["kind"] == "reference")
    assert ref["prompts"] == ["What is it?", "Where?"]
    assert (out / "fidelity.csv").read_text().splitlines()[0].startswith("video,method,ratio,kind")
    page = (out / "fidelity.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 2 and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert (out / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = runner.invoke(app, ["fidelity", str(clip_path), "--methods", "none"])
    assert r.exit_code == 2 and "give --target and --target-model" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["fidelity", str(clip_path), "--target", "llava-onevision", "--target-model", str(llava),
                            "--ratios", "0.5,2"])
    assert r.exit_code == 2 and "not in (0, 1]" in r.output
    with pytest.raises(UsageError, match="prompt set is empty"):
        fid.read_prompts([" "])


def test_a_pre_encoder_method_gets_its_own_pass(tmp_path: Path, clip_path: Path, llava: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    count = Counter(monkeypatch)
    notes: list[str] = []
    s = sweep(tmp_path / "out", [clip_path], llava, methods="uniform,rlt", ratios="0.5", controls=True,
              on_event=lambda kind, data: notes.append(data["message"]) if kind == "note" else None)
    assert any("rlt" in n and "its own encoder pass" in n for n in notes)
    assert {r["method"] for r in method_records(s)} == {"uniform", "rlt"}
    # the shared pass, RLT's own pass (static frames skipped), and a shared pass again for RLT's controls
    assert s.encoder_passes == {str(clip_path): 3}
    assert count.frames <= 3 * 4
    rlt = next(r for r in method_records(s) if r["method"] == "rlt")
    assert {("random", rlt["ratio_achieved"]), ("pool", rlt["ratio_achieved"])} <= {
        (r["method"], r["ratio"]) for r in s.records if r["kind"] == "control"}


def test_a_failing_video_does_not_stop_the_others(tmp_path: Path, clip_path: Path, llava: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    s = sweep(tmp_path / "out", [bad, clip_path], llava)
    assert list(s.failed) == [str(bad)]
    assert [r["video"] for r in method_records(s)] == [str(clip_path)]
    assert "on these 1 video:" in s.pareto[0]
    r = runner.invoke(app, ["fidelity", str(bad), str(clip_path), "--target", "llava-onevision", "--target-model",
                            str(llava), "--methods", "uniform", "--ratios", "0.5", "--frames", "4",
                            "--answer-tokens", "2", "--no-controls", "-o", str(tmp_path / "out2")])
    assert r.exit_code == 1 and "failed" in r.output and "Traceback" not in r.output
