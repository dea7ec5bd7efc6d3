using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels;

internal static class BorrowedDevice
{
    extension(Borrowed<CudaTensor> b)
    {
        /// <summary>Device address of the tensor's element 0.</summary>
        public ulong Ptr => b.Tensor.Ptr;
    }
}
