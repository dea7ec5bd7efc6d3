using System.Runtime.CompilerServices;

[assembly: InternalsVisibleTo("MetaLoraNative.Tests")]

namespace MetaLoraNative.Kernels;
