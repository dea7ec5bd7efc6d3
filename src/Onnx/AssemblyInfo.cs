namespace MetaLoraNative.Onnx;
