//! Test kernels for the device prelude (`tests/cuda/prelude_test.cuh`) and their specs.

use kiln_runtime::{DtypeId, KernelSource, KernelSpec, PRELUDE, TemplateArg, template_expr};

/// The prelude test source.
pub static SOURCE: KernelSource =
    KernelSource { name: "prelude_test.cuh", text: include_str!("../cuda/prelude_test.cuh"), headers: &[PRELUDE] };

/// `test_vec_copy<T, N, pdl>`.
pub fn vec_copy(dt: DtypeId, n: u32, pdl: bool) -> KernelSpec {
    let e = template_expr("test_vec_copy", &[dt.into(), n.into(), pdl.into()]);
    KernelSpec::new(format!("test_vec_copy__{}__v{n}{}", dt.tag(), if pdl { "__pdl" } else { "" }), &SOURCE, e).pdl(pdl)
}
/// `test_convert<T>`.
pub fn convert(dt: DtypeId) -> KernelSpec {
    KernelSpec::new(format!("test_convert__{}", dt.tag()), &SOURCE, template_expr("test_convert", &[dt.into()]))
}
/// `test_reduce<kWarps>`.
pub fn reduce(warps: u32) -> KernelSpec {
    KernelSpec::new(format!("test_reduce__w{warps}"), &SOURCE, template_expr("test_reduce", &[warps.into()]))
}
/// `test_math`.
pub fn math() -> KernelSpec {
    KernelSpec::new("test_math", &SOURCE, "test_math<float>")
}
/// `test_pdl_producer` (triggers its dependents early; it waits on nothing, so it is no PDL kernel).
pub fn pdl_producer() -> KernelSpec {
    KernelSpec::new("test_pdl_producer", &SOURCE, "test_pdl_producer<float>")
}
/// `test_pdl_consumer<pdl>`.
pub fn pdl_consumer(pdl: bool) -> KernelSpec {
    KernelSpec::new(
        format!("test_pdl_consumer{}", if pdl { "__pdl" } else { "" }),
        &SOURCE,
        template_expr("test_pdl_consumer", &[TemplateArg::Bool(pdl)]),
    )
    .pdl(pdl)
}
/// `test_pdl_id_writer` (like [`pdl_producer`], for i32 ids; params [`IdWriterParams`]).
pub fn pdl_id_writer() -> KernelSpec {
    KernelSpec::new("test_pdl_id_writer", &SOURCE, "test_pdl_id_writer<int>")
}

/// Every prelude test kernel.
pub fn all() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for dt in [DtypeId::F16, DtypeId::Bf16, DtypeId::F32] {
        for pdl in [false, true] {
            v.push(vec_copy(dt, (16 / dt.size()) as u32, pdl));
        }
        v.push(convert(dt));
    }
    v.push(vec_copy(DtypeId::Bf16, 2, false));
    for w in [1, 4, 32] {
        v.push(reduce(w));
    }
    v.push(math());
    v.push(pdl_producer());
    v.push(pdl_consumer(false));
    v.push(pdl_consumer(true));
    v.push(pdl_id_writer());
    v
}

/// Parameters of `test_pdl_producer` / `test_pdl_consumer` (mirrors `PdlParams` in the .cuh).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PdlParams {
    /// Device address of `n` floats the producer writes.
    pub data: u64,
    /// Device address of `n` floats the consumer writes.
    pub out: u64,
    /// Element count.
    pub n: i64,
    /// Producer: clock cycles to spin before writing.
    pub spin: i64,
    /// Producer writes `data[i] = value + i`.
    pub value: f32,
}

impl PdlParams {
    /// Checks a downloaded `out` of the consumer: `out[i] = 2·data[i] = 2·(value + i)`, i.e. it
    /// saw every write of the producer.
    pub fn check_consumer_out(&self, out: &[f32]) -> anyhow::Result<()> {
        for (i, g) in out.iter().enumerate() {
            anyhow::ensure!(*g == 2.0 * (self.value + i as f32), "out[{i}] = {g}: the producer's write was not seen");
        }
        Ok(())
    }
}

/// Parameters of `test_pdl_id_writer<int>` (mirrors `IdWriterParams<int>` in the .cuh).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IdWriterParams {
    /// Device address of `n` i32 ids to copy.
    pub src: u64,
    /// Device address of the `n` i32 ids written.
    pub dst: u64,
    /// Id count.
    pub n: i64,
    /// Clock cycles to spin before writing.
    pub spin: i64,
}
