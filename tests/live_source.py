"""A live source for the tests: remux a clip as MPEG-TS at `speed` × real time, `loops` times back to back (the
timestamps continue), into standard output ("-") or a URL (e.g. tcp://127.0.0.1:PORT?listen=1).

    python tests/live_source.py CLIP DEST [--speed 1] [--loops 1] [--seconds S] [--start-after FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import av


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clip")
    ap.add_argument("dest")
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--loops", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=float("inf"), help="stop after this much of the stream")
    ap.add_argument("--start-after", help="wait until this file exists (the reader is ready) before streaming")
    a = ap.parse_args()
    while a.start_after and not os.path.exists(a.start_after):
        time.sleep(0.05)
    out = av.open(sys.stdout.buffer if a.dest == "-" else a.dest, "w", format="mpegts")
    shift, start = 0, None  # the clock starts once the first packet is out (a listening output waits for its reader)
    stream = None
    try:
        for _ in range(a.loops):
            with av.open(a.clip) as src:
                v = src.streams.video[0]
                if stream is None:
                    stream = out.add_stream_from_template(v)
                last = 0
                for p in src.demux(v):
                    if p.dts is None:
                        continue
                    if float((p.dts + shift) * p.time_base) > a.seconds:
                        return
                    p.dts += shift
                    p.pts = (p.pts if p.pts is not None else p.dts - shift) + shift
                    last = max(last, p.pts + (p.duration or 0))
                    t = float(p.dts * p.time_base) / a.speed
                    if start is not None and (wait := start + t - time.time()) > 0:
                        time.sleep(wait)
                    p.stream = stream
                    out.mux(p)
                    if start is None:
                        start = time.time() - t
                    if a.dest == "-":
                        sys.stdout.buffer.flush()
                shift = last
    except (BrokenPipeError, ConnectionError):
        pass
    finally:
        try:
            out.close()
        except Exception:
            pass


if __name__ == "__main__":
    main()
