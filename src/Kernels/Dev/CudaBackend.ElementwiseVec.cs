using System.Runtime.InteropServices;

namespace MetaLoraNative.Kernels;

// The elementwise and layout kernels with 16-byte accesses and 32-bit indices, version 2 from the kernel playground
// (kernels/dev/elementwise/02_vec16.cu, kernels/dev/layout/02_vec16.cu): opted in by METALORA_ELEMENTWISE=vec16 or
// ElementwiseVec16 = true, reached from the engine's launchers (Ops/CudaBackend.Elementwise.cs, .Layout.cs,
// .Conditioning.cs), each of which runs its version 1 kernel whenever the Try method here answers false: switch off,
// or a shape or pointer ElementwiseVec refuses. Checked by `metalora check cuda --dev` (CudaParity.Dev, the vec16
// checks) and timed beside version 1 by `metalora kernels bench --dev`. Promotion moves the kernels into
// kernels/elementwise.cu, layout.cu and conditioning.cu and these launches into the Ops files, version 1 staying as
// the fallback for unaligned shapes.
public sealed partial class CudaBackend
{
    const string ElementwiseVecFile = "dev/elementwise/02_vec16.cu";
    const string LayoutVecFile = "dev/layout/02_vec16.cu";

    /// <summary>Whether the elementwise and layout ops try version 2's 16-byte kernels (METALORA_ELEMENTWISE=vec16).</summary>
    public bool ElementwiseVec16 { get; set; } = ElementwiseVec.FromEnvironment();

    /// <summary>With the switch on: launches that took version 2, and those that fell back to version 1 (for the parity checks).</summary>
    public (int Vector, int Fallback) ElementwiseVecCounts => (vecLaunches, vecFallbacks);
    int vecLaunches, vecFallbacks;

    /// <summary>Mirrors FastDiv in the 02_vec16.cu files.</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct FastDivArg
    {
        public uint D, M, S;
        public static implicit operator FastDivArg(FastDivisor f) => new() { D = f.D, M = f.M, S = f.S };
    }

    /// <summary>Mirrors GatedVecParams in elementwise/02_vec16.cu (64 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct GatedVecParams
    {
        public ulong Out, X, Gate, Y;
        public uint Vectors;
        public FastDivArg Row, Batch;
    }

    /// <summary>Mirrors SliceVecParams in layout/02_vec16.cu (64 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct SliceVecParams
    {
        public ulong Dst, Src;
        public int DtDst, DtSrc;
        public uint LdDst, LdSrc, OffDst, OffSrc, Vectors;
        public FastDivArg Row;
        public int Accumulate;
    }

    /// <summary>Mirrors QkvVecParams in layout/02_vec16.cu (72 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct QkvVecParams
    {
        public ulong Q, K, V, Qkv;
        public uint Vectors;
        public FastDivArg DVec, Heads, Tokens;
    }

    /// <summary>Counts the route when the switch is on; false (version 1 runs) when it is off or the route refuses.</summary>
    bool VecRoute(bool vectorised)
    {
        if (!ElementwiseVec16) return false;
        if (vectorised) vecLaunches++; else vecFallbacks++;
        return vectorised;
    }

    void LaunchVec(string file, string kernel, long vectors, params ReadOnlySpan<KArg> args) =>
        Launch(file, kernel, (Grid1D(vectors), 1, 1), (Block, 1, 1), 0, args);

    /// <summary>acc += alpha · x (axpy_v16).</summary>
    bool TryAxpyVec(CudaTensor acc, CudaTensor x, float alpha)
    {
        if (!VecRoute(ElementwiseVec16 && ElementwiseVec.Contiguous(acc.Length, acc.Ptr, x.Ptr))) return false;
        long nvec = acc.Length / ElementwiseVec.Vector;
        LaunchVec(ElementwiseVecFile, "axpy_v16", nvec, acc.Ptr, acc.Dt, x.Ptr, x.Dt, (int)nvec, alpha);
        return true;
    }

    /// <summary>t = alpha · t (scale_v16).</summary>
    bool TryScaleVec(CudaTensor t, float alpha)
    {
        if (!VecRoute(ElementwiseVec16 && ElementwiseVec.Contiguous(t.Length, t.Ptr))) return false;
        long nvec = t.Length / ElementwiseVec.Vector;
        LaunchVec(ElementwiseVecFile, "scale_v16", nvec, t.Ptr, t.Dt, (int)nvec, alpha);
        return true;
    }

    /// <summary>An activation (version 1's kernel name + "_v16"): operands bf16, output first.</summary>
    bool TryUnaryVec(string kernel, CudaTensor y, params ReadOnlySpan<CudaTensor> inputs)
    {
        Span<ulong> ptrs = stackalloc ulong[inputs.Length + 1];
        ptrs[0] = y.Ptr;
        for (int i = 0; i < inputs.Length; i++) ptrs[i + 1] = inputs[i].Ptr;
        if (!VecRoute(ElementwiseVec16 && ElementwiseVec.Contiguous(y.Length, ptrs))) return false;
        long nvec = y.Length / ElementwiseVec.Vector;
        var args = new KArg[inputs.Length + 2];
        for (int i = 0; i <= inputs.Length; i++) args[i] = ptrs[i];
        args[^1] = (int)nvec;
        LaunchVec(ElementwiseVecFile, kernel + "_v16", nvec, args);
        return true;
    }

    /// <summary>out = x + gate[b]·y (forward) or dy = gate[b]·dOut (backward, y = null) over (B, L, C).</summary>
    bool TryGatedResidualVec(string kernel, CudaTensor output, CudaTensor x, CudaTensor gate, CudaTensor? y, int b, int l, int c)
    {
        bool ok = y == null
            ? ElementwiseVec.GatedResidual(b, l, c, output.Ptr, x.Ptr, gate.Ptr)
            : ElementwiseVec.GatedResidual(b, l, c, output.Ptr, x.Ptr, gate.Ptr, y.Ptr);
        if (!VecRoute(ElementwiseVec16 && ok)) return false;
        long nvec = output.Length / ElementwiseVec.Vector;
        var p = new GatedVecParams
        {
            Out = output.Ptr, X = x.Ptr, Gate = gate.Ptr, Y = y?.Ptr ?? 0, Vectors = (uint)nvec,
            Row = FastDivisor.Of(c / ElementwiseVec.Vector), Batch = FastDivisor.Of(l),
        };
        LaunchParams(ElementwiseVecFile, kernel + "_v16", (Grid1D(nvec), 1, 1), (Block, 1, 1), p);
        return true;
    }

    /// <summary>slice_copy's contract as slice_copy_v16 when <see cref="ElementwiseVec.Slice"/> allows.</summary>
    bool TrySliceCopyVec(CudaTensor dst, int dstStart, CudaTensor src, int srcStart, long outer, long inner,
                         int dstDim, int srcDim, int len, bool accumulate)
    {
        var plan = ElementwiseVec16 ? ElementwiseVec.Slice(outer, inner, dstDim, dstStart, srcDim, srcStart, len, dst.Ptr, src.Ptr) : null;
        if (!VecRoute(plan != null)) return false;
        var s = plan!.Value;
        var p = new SliceVecParams
        {
            Dst = dst.Ptr, Src = src.Ptr, DtDst = dst.Dt, DtSrc = src.Dt,
            LdDst = (uint)s.LdDst, LdSrc = (uint)s.LdSrc, OffDst = (uint)s.OffDst, OffSrc = (uint)s.OffSrc,
            Vectors = (uint)s.Vectors, Row = FastDivisor.Of(s.Cols / ElementwiseVec.Vector), Accumulate = accumulate ? 1 : 0,
        };
        LaunchParams(LayoutVecFile, "slice_copy_v16", (Grid1D(s.Vectors), 1, 1), (Block, 1, 1), p);
        return true;
    }

    /// <summary>split_qkv_v16 or merge_qkv_v16 over qkv (B, L, 3, H, D) and q, k, v (B, H, L, D).</summary>
    bool TryQkvVec(string kernel, CudaTensor qkv, CudaTensor q, CudaTensor k, CudaTensor v, int b, int l, int h, int d)
    {
        if (!VecRoute(ElementwiseVec16 && ElementwiseVec.Qkv(b, l, h, d, qkv.Ptr, q.Ptr, k.Ptr, v.Ptr))) return false;
        long nvec = qkv.Length / ElementwiseVec.Vector;
        var p = new QkvVecParams
        {
            Q = q.Ptr, K = k.Ptr, V = v.Ptr, Qkv = qkv.Ptr, Vectors = (uint)nvec,
            DVec = FastDivisor.Of(d / ElementwiseVec.Vector), Heads = FastDivisor.Of(h), Tokens = FastDivisor.Of(l),
        };
        LaunchParams(LayoutVecFile, kernel + "_v16", (Grid1D(nvec), 1, 1), (Block, 1, 1), p);
        return true;
    }
}
