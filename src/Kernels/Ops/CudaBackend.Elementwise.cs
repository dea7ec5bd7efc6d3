using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels;

// Elementwise (elementwise.cu): in-place axpy and scale, and the activations. With ElementwiseVec16 on, each first
// tries version 2's 16-byte kernel (Dev/CudaBackend.ElementwiseVec.cs).
public sealed partial class CudaBackend
{
    public void AddInPlace(Tensor acc, Tensor x, float alpha = 1f)
    {
        using var _ = Op("add_inplace");
        var a = T(acc, "acc");
        var cx = T(x, "x");
        Shapes.Require(a.Length == cx.Length, $"add_inplace: {a} += {cx}");
        if (!TryAxpyVec(a, cx, alpha))
            Launch1D("elementwise.cu", "axpy_kernel", a.Length, a.Ptr, a.Dt, cx.Ptr, cx.Dt, a.Length, alpha);
    }

    public void ScaleInPlace(Tensor t, float alpha)
    {
        using var _ = Op("scale_inplace");
        ScaleWith(T(t), alpha);
    }

    /// <summary>t = alpha · t in t's precision.</summary>
    internal void ScaleWith(CudaTensor t, float alpha)
    {
        if (!TryScaleVec(t, alpha))
            Launch1D("elementwise.cu", "scale_kernel", t.Length, t.Ptr, t.Dt, t.Length, alpha);
    }

    public Tensor Silu(Tensor x) => Unary("silu_forward", x);
    public Tensor GeluTanh(Tensor x) => Unary("gelu_tanh_forward", x);
    public Tensor GeluTanhBackward(Tensor x, Tensor dy) => UnaryBackward("gelu_tanh_backward", x, dy);

    Tensor Unary(string kernel, Tensor x)
    {
        using var _ = Op(kernel);
        using var bx = Bf16(x, "x");
        var y = Alloc(bx.Tensor.Shape);
        if (!TryUnaryVec(kernel, y, bx.Tensor))
            Launch1D("elementwise.cu", kernel, y.Length, y.Ptr, bx.Ptr, y.Length);
        return y;
    }

    Tensor UnaryBackward(string kernel, Tensor x, Tensor dy)
    {
        using var _ = Op(kernel);
        Shapes.Require(x.Length == dy.Length, $"{kernel}: x {x} and dy {dy}");
        using var bx = Bf16(x, "x");
        using var bdy = Bf16(dy, "dy");
        var dx = Alloc(bx.Tensor.Shape);
        if (!TryUnaryVec(kernel, dx, bx.Tensor, bdy.Tensor))
            Launch1D("elementwise.cu", kernel, dx.Length, dx.Ptr, bx.Ptr, bdy.Ptr, dx.Length);
        return dx;
    }
}
