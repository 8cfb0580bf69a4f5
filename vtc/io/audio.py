"""Training-free audio saliency from the decoded soundtrack (torch only), for audio-guided budgets.

OmniZip's authors score each 40 ms audio token by the attention it receives in Qwen2.5-Omni's audio encoder.
vtc has no audio encoder; it uses a signal-processing stand-in at the same 25 tokens/s:

    saliency = 0.8 · mel-band energy in dB (80 dB range, scaled to [0, 1] over the clip)
             + 0.2 · spectral flux (half-wave rectified frame-to-frame increase of the log-mel spectrum, scaled)
 Loud, busy audio (speech, music hits, onsets) scores high, silence low. The
file's metadata records the signal as `logmel_energy+flux`.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor

from vtc.io.decode import AUDIO_RATE, decode_audio

SALIENCY_NAME = "logmel_energy+flux (training-free stand-in for Qwen2.5-Omni audio attention)"


def mel_filterbank(n_fft: int, n_mels: int, rate: int, fmin: float = 0.0, fmax: float | None = None) -> Tensor:
    """Triangular mel filters [n_mels, n_fft // 2 + 1] (HTK mel scale)."""
    fmax = fmax or rate / 2

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    mels = np.linspace(hz_to_mel(np.array(fmin)), hz_to_mel(np.array(fmax)), n_mels + 2)
    hz = mel_to_hz(mels)
    bins = np.linspace(0, rate / 2, n_fft // 2 + 1)
    fb = np.zeros((n_mels, bins.size))
    for i in range(n_mels):
        lo, mid, hi = hz[i], hz[i + 1], hz[i + 2]
        up = (bins - lo) / max(mid - lo, 1e-9)
        down = (hi - bins) / max(hi - mid, 1e-9)
        fb[i] = np.clip(np.minimum(up, down), 0, None)
    return torch.from_numpy(fb).float()


def saliency_from_pcm(pcm: np.ndarray | Tensor, rate: int = AUDIO_RATE, tokens_per_sec: int = 25,
                      n_mels: int = 64) -> Tensor:
    """pcm: mono float [S] → saliency [A], A = ceil(S / rate · tokens_per_sec), in [0, 1]."""
    x = torch.as_tensor(pcm, dtype=torch.float32).reshape(-1)
    hop = rate // tokens_per_sec
    n_tok = max(1, math.ceil(x.numel() / hop))
    if x.numel() == 0:
        return torch.zeros(0)
    n_fft = 1 << max(8, int(math.ceil(math.log2(2 * hop))))
    x = torch.nn.functional.pad(x, (0, n_tok * hop - x.numel()))
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=2 * hop, window=torch.hann_window(2 * hop),
                      center=True, return_complex=True).abs() ** 2  # [F, frames]
    mel = mel_filterbank(n_fft, n_mels, rate) @ spec  # [M, frames]
    logmel = 10 * torch.log10(mel + 1e-10)
    logmel = torch.maximum(logmel, logmel.max() - 80.0)  # 80 dB dynamic range
    energy = 10 * torch.log10(mel.sum(0) + 1e-10)
    energy = torch.maximum(energy, energy.max() - 80.0)[:n_tok]
    flux = torch.zeros(logmel.shape[1])
    flux[1:] = (logmel[:, 1:] - logmel[:, :-1]).clamp_min(0).mean(0)
    flux = flux[:n_tok]
    score = (energy - energy.min()) / (energy.max() - energy.min() + 1e-9)
    out = 0.8 * score + 0.2 * flux / (flux.max() + 1e-9)
    return out if out.numel() == n_tok else torch.nn.functional.pad(out, (0, n_tok - out.numel()))


def audio_saliency(path: str | os.PathLike[str], start: float = 0.0, tokens_per_sec: int = 25) -> Tensor | None:
    """Saliency [A] of a video's first audio track at `tokens_per_sec`, aligned so token 0 starts at `start`
    (the video stream's start time); None without an audio track. A silent track gives a flat saliency."""
    pcm = decode_audio(path)
    if pcm is None or pcm.size == 0:
        return None
    if float(np.abs(pcm).max()) == 0.0:
        return torch.zeros(max(1, math.ceil(pcm.size / (AUDIO_RATE // tokens_per_sec))))
    sal = saliency_from_pcm(pcm, AUDIO_RATE, tokens_per_sec)
    lead = int(round(start * tokens_per_sec))
    return torch.nn.functional.pad(sal, (lead, 0)) if lead > 0 else sal
