"""Independent judges of synthesized speech, for benchmarks (never the product).

    judge_speech.py MODELS_DIR MANIFEST.json

MANIFEST is a list of {"file": WAV (16 kHz mono), "language": "ja"|"en", "text": what was said,
...}. Prints the same list as JSON with, for each file, DNSMOS (Microsoft's P.808 MOS and P.835
SIG/BAK/OVRL, as the speechmos package computes them) and Whisper base's transcript with its
character error rate (Japanese) or word error rate (English) against the text.
"""
import json
import re
import sys
import unicodedata

import ctranslate2
import librosa
import numpy as np
import onnxruntime as ort
import tokenizers

SR = 16000
DNSMOS_SECS = 9.01


class Dnsmos:
    """DNSMOS as speechmos 0.0.1.1 runs it: 9.01 s windows every second, P.808 from a 120-band
    log-mel, P.835 from the samples with the non-personalized polynomial fits."""

    def __init__(self, models):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.primary = ort.InferenceSession(f"{models}/sig_bak_ovr.onnx", opts)
        self.p808 = ort.InferenceSession(f"{models}/model_v8.onnx", opts)

    @staticmethod
    def melspec(audio):
        mel = librosa.feature.melspectrogram(y=audio, sr=SR, n_fft=321, hop_length=160, n_mels=120)
        return ((librosa.power_to_db(mel, ref=np.max) + 40) / 40).T

    def __call__(self, audio):
        need = int(DNSMOS_SECS * SR)
        while len(audio) < need:
            audio = np.append(audio, audio)
        hops = int(np.floor(len(audio) / SR) - DNSMOS_SECS) + 1
        sig, bak, ovr, p808 = [], [], [], []
        for i in range(hops):
            seg = audio[i * SR: i * SR + need]
            if len(seg) < need:
                continue
            x = seg.astype(np.float32)[np.newaxis, :]
            m = self.melspec(seg[:-160]).astype(np.float32)[np.newaxis, :, :]
            p808.append(self.p808.run(None, {"input_1": m})[0][0][0])
            s, b, o = self.primary.run(None, {"input_1": x})[0][0]
            sig.append(np.poly1d([-0.08397278, 1.22083953, 0.0052439])(s))
            bak.append(np.poly1d([-0.13166888, 1.60915514, -0.39604546])(b))
            ovr.append(np.poly1d([-0.06766283, 1.11546468, 0.04602535])(o))
        return {"p808": float(np.mean(p808)), "sig": float(np.mean(sig)), "bak": float(np.mean(bak)),
                "ovrl": float(np.mean(ovr))}


class Whisper:
    """Whisper base (CTranslate2) with its own 80-band log-mel front end, beam search of 5."""

    def __init__(self, model_dir):
        self.model = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type="int8", intra_threads=2)
        self.tok = tokenizers.Tokenizer.from_file(f"{model_dir}/tokenizer.json")
        self.filters = librosa.filters.mel(sr=SR, n_fft=400, n_mels=80)

    def features(self, audio):
        audio = np.pad(audio, (0, max(0, 30 * SR - len(audio))))[: 30 * SR]
        stft = librosa.stft(audio, n_fft=400, hop_length=160, window="hann", center=True)
        power = np.abs(stft[:, :-1]) ** 2
        log = np.log10(np.clip(self.filters @ power, 1e-10, None))
        log = np.maximum(log, log.max() - 8.0)
        return ((log + 4.0) / 4.0).astype(np.float32)

    def __call__(self, audio, language):
        prompt = [self.tok.token_to_id(t) for t in
                  ("<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>")]
        feats = ctranslate2.StorageView.from_array(self.features(audio)[np.newaxis])
        out = self.model.generate(feats, [prompt], beam_size=5)
        return self.tok.decode(out[0].sequences_ids[0], skip_special_tokens=True).strip()


def edit_distance(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def units(text, language):
    """What the error rate counts: characters for Japanese, words for English, without
    punctuation, spacing or case."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = "".join(c if not unicodedata.category(c).startswith(("P", "S")) else " " for c in t)
    if language == "ja":
        return [c for c in t if not c.isspace()]
    return t.split()


def main():
    models, manifest = sys.argv[1], sys.argv[2]
    items = json.load(open(manifest))
    dnsmos = Dnsmos(models)
    whisper = Whisper(f"{models}/whisper-base")
    for it in items:
        audio, _ = librosa.load(it["file"], sr=SR, mono=True)
        it.update(dnsmos(audio))
        heard = whisper(audio, it["language"])
        ref, hyp = units(it["text"], it["language"]), units(heard, it["language"])
        it["heard"] = heard
        it["error_rate"] = edit_distance(ref, hyp) / max(1, len(ref))
        print(f"{it.get('voice', '')} {it.get('variant', '')}: P.808 {it['p808']:.2f} "
              f"error {it['error_rate']:.3f} heard {heard!r}", file=sys.stderr)
    json.dump(items, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
