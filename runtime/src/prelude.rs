//! The device prelude every op includes: `runtime/cuda/kiln/*.cuh`, passed to the compiler from
//! memory.

use crate::source::Header;

macro_rules! headers {
    ($($name:literal),* $(,)?) => {
        &[$(Header { name: concat!("kiln/", $name), text: include_str!(concat!("../cuda/kiln/", $name)) }),*]
    };
}

/// `kiln/common.cuh`, `kiln/vec.cuh`, `kiln/convert.cuh`, `kiln/reduce.cuh`, `kiln/math.cuh`,
/// `kiln/pdl.cuh`: NVRTC-clean, device-only.
pub const PRELUDE: &[Header] = headers!["common.cuh", "vec.cuh", "convert.cuh", "reduce.cuh", "math.cuh", "pdl.cuh"];
