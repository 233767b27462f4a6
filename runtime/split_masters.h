// split_float32_masters: a weight whose bf16 copy AdamW keeps (keep_bf16_param_copies) holds its float32 master as
// two halves, the copy itself (its bf16 rounding) and the float32's low 16 bits (kernels/split_float32.h), both inside
// the parameter's own float32 buffer (Value::stored_in: the copy in its first half, the low halves in its second).
// AdamW then reads and writes 2 + 2 bytes of master and copy per parameter instead of reading 4 and writing 4 + 2
// (28 -> 26 bytes per parameter with a bf16 gradient), and the copy needs no buffer of its own (2 bytes per
// parameter less memory).
//
// The prologue's Cast of such a weight becomes SplitFloat32(param) -> (copy, low halves), and its AdamW takes the low
// halves as input 9. From then on the parameter's buffer holds the halves, not float32 values: the values are the
// join of the two (Trainer::parameters and checkpoints read them so, TrainingGraph::split_masters), and whoever
// writes a parameter marks the copies stale so that the halves are split again. Only whole-parameter updates whose
// parameter nothing else in the graph reads. The one change in values: a float32 exactly halfway between two bf16
// (low half 0x8000) moves one unit of its last place toward zero when split (2^-24 relative, ~1 value in 65,536).
#pragma once

#include "runtime/training_graph.h"

namespace gv {

Status split_float32_masters(TrainingGraph& tg);

}  // namespace gv
