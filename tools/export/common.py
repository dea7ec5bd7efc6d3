"""Shared helpers for the export scripts: ONNX saving with external data, fp16 conversion, models.json updates.

Tensor names are a fixed contract with src/Onnx (see docs/ENCODERS.md); the C# side validates them at load.
"""
import json
import os
import shutil
import tempfile

import onnx
import torch

OPSET = 17
MANIFEST = "models.json"
FORMAT = "metalora-models/1"


def export(module: torch.nn.Module, args: tuple, path: str, input_names, output_names, dynamic_axes=None):
    """torch.onnx.export into a scratch folder, then re-save as PATH (+ PATH.data when the weights pass 2 GB).

    The TorchScript exporter (dynamo=False) is used on purpose: it keeps the exact input/output names we give it.
    """
    module.eval()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = os.path.join(scratch, "model.onnx")
        kwargs = dict(input_names=list(input_names), output_names=list(output_names), opset_version=OPSET,
                      dynamic_axes=dynamic_axes or {}, do_constant_folding=True)
        try:
            torch.onnx.export(module, args, tmp, dynamo=False, **kwargs)
        except TypeError:  # torch < 2.5 has no `dynamo` argument
            torch.onnx.export(module, args, tmp, **kwargs)
        model = onnx.load(tmp, load_external_data=True)
        save(model, path)
    check_names(path, input_names, output_names)


def save(model: onnx.ModelProto, path: str):
    """Saves one .onnx; weights go to PATH.data when the model is over ~2 GB (protobuf's limit)."""
    size = sum(t.ByteSize() for t in model.graph.initializer)
    data = os.path.basename(path) + ".data"
    if os.path.exists(path + ".data"):
        os.remove(path + ".data")
    if size > 1_900_000_000:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data, size_threshold=1024)
    else:
        onnx.save_model(model, path)
    print(f"wrote {path} ({size / 2**20:.0f} MiB of weights{', external: ' + data if size > 1_900_000_000 else ''})")


def check_names(path: str, input_names, output_names):
    model = onnx.load(path, load_external_data=False)
    got_in = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    got_out = [o.name for o in model.graph.output]
    if got_in != list(input_names) or got_out != list(output_names):
        raise SystemExit(f"{path}: names {got_in} -> {got_out}, expected {list(input_names)} -> {list(output_names)}")


def to_fp16_weights(path: str):
    """Stores weights in fp16 while keeping fp32 inputs/outputs (keep_io_types), as the C# wrappers expect float32."""
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise SystemExit("fp16 conversion needs `pip install onnxconverter-common`") from e
    model = onnx.load(path, load_external_data=True)
    model = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    save(model, path)


def update_manifest(out_dir: str, component: str, model: str, tokenizer: str | None = None, kind: str | None = None):
    """Adds or replaces one component entry in OUT_DIR/models.json (paths relative to OUT_DIR)."""
    path = os.path.join(out_dir, MANIFEST)
    manifest = {"format": FORMAT, "components": {}}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    entry = {"model": model}
    if tokenizer:
        entry["tokenizer"] = tokenizer
    if kind:
        entry["kind"] = kind
    manifest.setdefault("components", {})[component] = entry
    manifest["format"] = FORMAT
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    print(f"{MANIFEST}: {component} -> {entry}")


def copy_tokenizer_file(repo_or_dir: str, filename: str, out_dir: str, out_name: str, subfolder: str | None = None) -> str:
    """Copies a tokenizer file from a local folder or downloads it from the Hugging Face Hub."""
    local = os.path.join(repo_or_dir, subfolder or "", filename)
    if os.path.isdir(repo_or_dir):
        if not os.path.exists(local):
            raise SystemExit(f"{local} not found")
        src = local
    else:
        from huggingface_hub import hf_hub_download
        src = hf_hub_download(repo_or_dir, filename, subfolder=subfolder)
    shutil.copyfile(src, os.path.join(out_dir, out_name))
    print(f"copied {filename} -> {os.path.join(out_dir, out_name)}")
    return out_name
