mod fdct;
mod ycbcr;

use crate::encoder::Operations;
use crate::quantization::QuantizationTable;
pub use fdct::fdct_avx2;
pub(crate) use ycbcr::*;

pub(crate) struct AVX2Operations;

impl Operations for AVX2Operations {
    #[inline(always)]
    fn fdct(data: &mut [i16; 64]) {
        fdct_avx2(data);
    }

    // pbip: the quantisation loop compiled with AVX2 (8 coefficients per instruction).
    #[inline(always)]
    fn quantize_block(block: &[i16; 64], q_block: &mut [i16; 64], table: &QuantizationTable) {
        // SAFETY: AVX2Operations is only chosen after AVX2 was detected at run time.
        unsafe { quantize_block_avx2(block, q_block, table) }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn quantize_block_avx2(
    block: &[i16; 64],
    q_block: &mut [i16; 64],
    table: &QuantizationTable,
) {
    crate::encoder::quantize_block_natural_then_zigzag(block, q_block, table);
}
