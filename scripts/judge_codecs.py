#!/usr/bin/env python3
"""The mix's encoders judged by ViSQOL (audio mode, 48 kHz, full band), for
benchmarks only (never the product).

    venv/bin/python scripts/judge_codecs.py DATA_DIR

(the venv from scripts/judge-deps.sh). Speaks a message with Open JTalk (Mei),
mixes it under three system tracks much as the worker does (ducked, -14 LUFS), and
encodes each mix with every candidate setting. Prints, per mix and setting,
the encoder's CPU seconds and ViSQOL's MOS-LQO of the decoded file against the
mix itself, then the means.
"""
import os
import resource
import subprocess
import sys
import tempfile

import visqol

MESSAGE = "お誕生日おめでとうございます。いつも優しく見守ってくれて本当にありがとう。これからも健康で、笑顔いっぱいの一年になりますように。"
TRACKS = ["celebration_elegant", "celebration_energetic", "celebration_gentle"]
CANDIDATES = {
    "aac 160k (default coder)": ["-c:a", "aac", "-b:a", "160k", "-f", "mp4"],
    "aac 160k fast coder": ["-c:a", "aac", "-aac_coder", "fast", "-b:a", "160k", "-f", "mp4"],
    "mp3 192k (LAME default)": ["-c:a", "libmp3lame", "-b:a", "192k", "-f", "mp3"],
    "mp3 192k quality 5": ["-c:a", "libmp3lame", "-b:a", "192k", "-compression_level", "5", "-f", "mp3"],
    "mp3 192k quality 7": ["-c:a", "libmp3lame", "-b:a", "192k", "-compression_level", "7", "-f", "mp3"],
}


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    data = sys.argv[1] if len(sys.argv) > 1 else "data"
    work = tempfile.mkdtemp(prefix="judge-codecs-")
    text = os.path.join(work, "message.txt")
    with open(text, "w") as f:
        f.write(MESSAGE + "\n")
    voice = os.path.join(work, "voice.wav")
    subprocess.run(
        ["open_jtalk", "-x", "/var/lib/mecab/dic/open-jtalk/naist-jdic", "-m",
         os.path.join(data, "voices/system/mei_normal.htsvoice"), "-ow", voice, text],
        check=True,
    )
    api = visqol.VisqolApi()
    api.create(mode="audio")
    scores = {name: [] for name in CANDIDATES}
    cpu = {name: [] for name in CANDIDATES}
    for track in TRACKS:
        ref = os.path.join(work, f"ref_{track}.wav")
        # Close to the worker's graph (worker/src/pipeline/mix.rs: the voice
        # delayed and padded, the music ducked under it; without the fade-out
        # and the cut to length), then one loudnorm pass to -14 LUFS (dynamic
        # mode, true peaks under -1.5 dBTP) instead of the worker's measured
        # gain.
        graph = (
            "[0:a]aformat=sample_rates=48000:channel_layouts=stereo,adelay=1000|1000,apad=pad_dur=1.5,asplit=2[v][sc];"
            "[1:a]aformat=sample_rates=48000:channel_layouts=stereo,volume=0.5,afade=t=in:st=0:d=0.5[m0];"
            "[m0][sc]sidechaincompress=threshold=0.01:ratio=10:attack=20:release=600:makeup=1[m];"
            "[v][m]amix=inputs=2:duration=first:normalize=0,loudnorm=I=-14:TP=-1.5:linear=true,aresample=48000[out]"
        )
        ffmpeg("-i", voice, "-stream_loop", "-1", "-i", os.path.join(data, f"bgm/system/{track}.mp3"),
               "-filter_complex", graph, "-map", "[out]", "-c:a", "pcm_s16le", ref)
        for name, args in CANDIDATES.items():
            coded = os.path.join(work, f"{track}.{abs(hash(name))}")
            before = children_cpu()
            ffmpeg("-i", ref, *args, coded)
            cpu[name].append(children_cpu() - before)
            decoded = coded + ".wav"
            ffmpeg("-i", coded, "-c:a", "pcm_s16le", "-ar", "48000", decoded)
            mos = api.measure(ref, decoded).moslqo
            scores[name].append(mos)
            print(f"{track:24s} {name:28s} encode {cpu[name][-1]:.2f} CPU-s  MOS-LQO {mos:.3f}", flush=True)
    print()
    for name in CANDIDATES:
        s, c = scores[name], cpu[name]
        print(f"{name:28s} MOS-LQO mean {sum(s) / len(s):.3f} (min {min(s):.3f})  encode {sum(c) / len(c):.2f} CPU-s")


if __name__ == "__main__":
    main()
