#!/usr/bin/env bash
# Publishes the self-contained, trimmed CLI for linux-x64 into publish/linux-x64 (git-ignored): the only form of
# metalora that runs on a GPU machine without a .NET SDK. ONNX Runtime's CUDA/TensorRT providers are left out
# (see src/Cli/Cli.csproj, PublishOrtGpuProviders). Usage: tools/gpu/publish.sh [extra dotnet publish args]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=publish/linux-x64
rm -rf "$OUT"
dotnet publish src/Cli -c Release -r linux-x64 --self-contained -p:PublishTrimmed=true -p:DebugType=none -o "$OUT" "$@"
# debugger-only runtime pieces: the carried folder must stay under 64 MiB
rm -f "$OUT"/libmscordbi.so "$OUT"/libmscordaccore.so "$OUT"/createdump
echo "published $OUT: $(du -sh "$OUT" | cut -f1) in $(find "$OUT" -type f | wc -l) files"
du -b "$OUT" | tail -1 | awk '{ printf "%.1f MiB total\n", $1 / 1048576 }'
find "$OUT" -maxdepth 1 -type f -printf '%s %f\n' | sort -rn | head -5 | awk '{ printf "  %-40s %8.1f MiB\n", $2, $1 / 1048576 }'
