"""Extraction speed: this extractor vs the public STANet-style tooling vs ffmpeg decoding alone.

Same clips for all three, measured in one run: N ten-second 1280x720 H.264/AAC clips (testsrc2 +
a sine tone). The baseline decodes every frame with OpenCV and keeps frames by counter, writes a
WAV with ffmpeg, resamples it with scipy, computes the spectrogram second by second and writes one
small HDF5 file per second. "ffmpeg alone" is ``ffmpeg -i clip -f null -`` (full decode, no work).

    .venv/bin/python bench/bench_extraction.py [--clips 6] [--size 356]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sta_models.extraction import extract_video  # noqa: E402
from sta_models.ffmpeg_tools import ffmpeg_exe  # noqa: E402


def make_clips(folder: Path, n: int) -> list[Path]:
    clips = []
    for i in range(n):
        path = folder / f"clip{i}.mp4"
        subprocess.run([
            ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={25 if i % 2 == 0 else 30000 / 1001}:duration=10",
            "-f", "lavfi", "-i", f"sine=frequency={300 + 100 * i}:sample_rate=44100:duration=10",
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", str(path),
        ], check=True)
        clips.append(path)
    return clips


def baseline(video: Path, out_dir: Path, size: int) -> None:
    """The public tooling's way: OpenCV decodes every frame, frames picked by counter, per-second files."""
    import cv2
    import h5py
    from scipy import signal
    from scipy.io import wavfile

    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS)
    n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    seconds = int(n_frames / fps)
    wanted = {int((k + 0.5) * fps): k for k in range(seconds)}
    frames: dict[int, np.ndarray] = {}
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index in wanted:
            frames[wanted[index]] = cv2.cvtColor(cv2.resize(frame, (size, size)), cv2.COLOR_BGR2RGB)
        index += 1
    cap.release()
    wav = out_dir / f"{video.stem}.wav"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(video), "-ac", "1", str(wav)], check=True)
    rate, samples = wavfile.read(wav)
    samples = samples.astype(np.float64) / 32768.0
    samples = signal.resample(samples, int(len(samples) * 16000 / rate))
    for k in range(seconds):
        chunk = samples[16000 * k : 16000 * (k + 1)]
        _, _, spec = signal.spectrogram(chunk, fs=16000, nperseg=160, noverlap=80)
        spec = np.log(spec + 1e-7)
        spec = (spec - spec.mean()) / (spec.std() + 1e-9)
        with h5py.File(out_dir / f"{video.stem}_{k:03d}.h5", "w") as h5:
            h5.create_dataset("frame", data=frames.get(k, np.zeros((size, size, 3), np.uint8)))
            h5.create_dataset("audio", data=spec.astype(np.float32))


def ffmpeg_alone(video: Path) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(video), "-f", "null", "-"], check=True)


def timed(fn, clips: list[Path]) -> float:
    start = time.perf_counter()
    for clip in clips:
        fn(clip)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--size", type=int, default=356)
    parser.add_argument("--rounds", type=int, default=2, help="best of this many passes per method")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        clips = make_clips(tmp_path, args.clips)
        print(f"made {len(clips)} clips in {time.perf_counter() - t0:.1f}s", flush=True)
        out = tmp_path / "out"
        out.mkdir()

        def ours(clip: Path) -> None:
            target = out / f"{clip.stem}.h5"
            target.unlink(missing_ok=True)
            extract_video(clip, target, size=args.size)

        methods = {"this extractor": ours, "baseline (OpenCV, per-second files)": lambda c: baseline(c, out, args.size),
                   "ffmpeg alone (decode only)": ffmpeg_alone}
        best = {name: float("inf") for name in methods}
        for _ in range(args.rounds):  # interleaved rounds so background load hits every method alike
            for name, fn in methods.items():
                best[name] = min(best[name], timed(fn, clips))
    rates = {name: len(clips) / sec for name, sec in best.items()}
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    print(f"machine: {cpu}, {__import__('os').cpu_count()} cores; {len(clips)} clips of 10 s 1280x720; size {args.size}")
    for name, rate in rates.items():
        print(f"{name:40s} {rate:6.2f} videos/s  ({best[name] / len(clips):.3f} s/video)")
    ours_rate = rates["this extractor"]
    print(f"speed-up over baseline: {ours_rate / rates['baseline (OpenCV, per-second files)']:.2f}x (target >= 3x)")
    print(f"time vs ffmpeg alone:   {rates['ffmpeg alone (decode only)'] / ours_rate:.2f}x (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
