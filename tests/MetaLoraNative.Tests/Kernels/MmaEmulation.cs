using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// One warp's tensor-core instructions, lane by lane, for the CPU emulations of the playground's attention kernels
/// (kernels/dev/attention): mma.sync m16n8k16 .row.col f32.bf16.bf16.f32 and ldmatrix m8n8 .b16 (x4, plain and
/// .trans), from the fragment layouts of the PTX ISA as kernels/dev/attention/mma.cuh and 03_pipelined_forward.cu
/// state them. Registers are held per lane: regs[lane][i]. The layouts themselves are assumed here, as in the kernels;
/// a GPU run of `metalora check cuda --dev` is what checks them.
/// </summary>
internal static class MmaEmulation
{
    public static float Lo(uint w) => HalfPrecision.BFloat16ToFloat((ushort)(w & 0xffff));
    public static float Hi(uint w) => HalfPrecision.BFloat16ToFloat((ushort)(w >> 16));
    public static uint Pack(ushort lo, ushort hi) => lo | ((uint)hi << 16);
    public static uint PackF(float lo, float hi) => Pack(HalfPrecision.FloatToBFloat16(lo), HalfPrecision.FloatToBFloat16(hi));
    /// <summary>pack_bf16_residue: the low halves of the two-term bf16 split of P and dS.</summary>
    public static uint PackR(float lo, float hi) => PackF(lo - HalfPrecision.RoundToBFloat16(lo), hi - HalfPrecision.RoundToBFloat16(hi));

    /// <summary>
    /// d[lane] += A B for one warp; a[lane] = 4 regs, B's 2 regs are b[lane][b0] and b[lane][b0 + 1], d[lane] = 4
    /// floats (g = lane / 4, t = lane % 4).
    /// </summary>
    public static void Mma(float[][] d, uint[][] a, uint[][] b, int b0 = 0)
    {
        var A = new float[16, 16];
        var B = new float[16, 8];
        for (int lane = 0; lane < 32; lane++)
        {
            int g = lane >> 2, t = lane & 3;
            (A[g, 2 * t], A[g, 2 * t + 1]) = (Lo(a[lane][0]), Hi(a[lane][0]));
            (A[g + 8, 2 * t], A[g + 8, 2 * t + 1]) = (Lo(a[lane][1]), Hi(a[lane][1]));
            (A[g, 2 * t + 8], A[g, 2 * t + 9]) = (Lo(a[lane][2]), Hi(a[lane][2]));
            (A[g + 8, 2 * t + 8], A[g + 8, 2 * t + 9]) = (Lo(a[lane][3]), Hi(a[lane][3]));
            (B[2 * t, g], B[2 * t + 1, g]) = (Lo(b[lane][b0]), Hi(b[lane][b0]));
            (B[2 * t + 8, g], B[2 * t + 9, g]) = (Lo(b[lane][b0 + 1]), Hi(b[lane][b0 + 1]));
        }
        for (int lane = 0; lane < 32; lane++)
        {
            int g = lane >> 2, t = lane & 3;
            for (int r = 0; r < 4; r++)
            {
                int row = g + (r >= 2 ? 8 : 0), col = 2 * t + (r & 1);
                float s = 0f;
                for (int k = 0; k < 16; k++) s += A[row, k] * B[k, col];
                d[lane][r] += s;
            }
        }
    }

    /// <summary>
    /// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane 8i + r gives <paramref name="rowOf"/>(lane), the shared
    /// index of row r of matrix i (8 consecutive bf16). Register i of lane l holds, of matrix i, (row l/4, cols 2(l%4)
    /// and 2(l%4)+1), or with <paramref name="trans"/> (rows 2(l%4) and 2(l%4)+1, col l/4).
    /// </summary>
    public static uint[][] Ldmatrix(ushort[] shared, Func<int, int> rowOf, bool trans)
    {
        var rows = Enumerable.Range(0, 32).Select(rowOf).ToArray();
        var r = Regs(4);
        for (int lane = 0; lane < 32; lane++)
            for (int i = 0; i < 4; i++)
            {
                int q = lane >> 2, p = 2 * (lane & 3);
                r[lane][i] = trans
                    ? Pack(shared[rows[8 * i + p] + q], shared[rows[8 * i + p + 1] + q])
                    : Pack(shared[rows[8 * i + q] + p], shared[rows[8 * i + q] + p + 1]);
            }
        return r;
    }

    public static uint[][] Regs(int n) => [.. Enumerable.Range(0, 32).Select(_ => new uint[n])];
    public static float[][] Acc() => [.. Enumerable.Range(0, 32).Select(_ => new float[4])];
}
