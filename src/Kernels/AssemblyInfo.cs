namespace MetaLoraNative.Kernels;
