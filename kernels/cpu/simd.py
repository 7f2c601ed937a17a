"""Explicit SIMD for the packed-BQQ matmul: numba intrinsics that emit LLVM vector code.

numba's loop vectorizer leaves short token loops scalar (its vector body needs 32 or more iterations,
and the accumulator may alias the table), so the two hot operations are written here as LLVM IR with
``<lanes x float>`` values, which LLVM lowers to AVX2/AVX-512/NEON/SSE as the CPU allows:

* :func:`lut_accumulate`: out += Σ over ``nbytes`` code bytes of two table rows each (the low and the
  high nibble's sum of activations), in four independent vector registers;
* :func:`vadd`: dst = a + b over one row of ``lanes`` floats (table construction).

The row width is a compile-time constant taken from the *type* of the last argument, a tuple of
``lanes`` items (e.g. ``(0,) * 16``): each width is then its own, cacheable, specialization of the
calling functions. Rows are ``lanes`` consecutive float32 values.

numba's on-disk cache of the calling kernels (``kernels/cpu/__pycache__``) is keyed by their own source
file, not this one: after editing this module, delete that cache.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import errors, types
from numba.extending import intrinsic

NIBBLE_ROWS = 16  # table rows per nibble: every subset of 4 columns
BYTE_ROWS = 2 * NIBBLE_ROWS  # rows per code byte: low nibble's 16, then high nibble's 16
SUM_BLOCK = 8  # code bytes summed before adding to the output (fixes the summation order)


def _width(tag) -> int:
    if not isinstance(tag, types.UniTuple) or tag.count < 1:
        raise errors.TypingError(f"the row width must be given as a non-empty tuple, got {tag}")
    return tag.count


def _data(context, builder, aryty, value):
    return context.make_array(aryty)(context, builder, value).data


def _row_ptr(builder, base, offset, vec):
    return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())


def _lut_codegen(width: int):
    def codegen(context, builder, signature, args):
        tables_v, tbase, codes_v, cbase, count, out_v, obase, _ = args
        tab = _data(context, builder, signature.args[0], tables_v)
        cod = _data(context, builder, signature.args[2], codes_v)
        dst = _data(context, builder, signature.args[5], out_v)
        i64 = ir.IntType(64)
        vec = ir.VectorType(ir.FloatType(), width)
        zero = ir.Constant(vec, None)
        const = lambda v: ir.Constant(i64, v)  # noqa: E731

        def row(c, code, high):
            nib = builder.lshr(code, const(4)) if high else builder.and_(code, const(NIBBLE_ROWS - 1))
            index = builder.add(builder.mul(c, const(BYTE_ROWS)), nib)
            if high:
                index = builder.add(index, const(NIBBLE_ROWS))
            return builder.load(_row_ptr(builder, tab, builder.add(tbase, builder.mul(index, const(width))), vec),
                                align=4)

        target = _row_ptr(builder, dst, obase, vec)
        start = builder.load(target, align=4)
        entry = builder.block
        outer = builder.append_basic_block("lut.block")
        inner = builder.append_basic_block("lut.pairs")
        block_done = builder.append_basic_block("lut.block_done")
        done = builder.append_basic_block("lut.done")
        builder.cbranch(builder.icmp_signed(">", count, const(0)), outer, done)

        builder.position_at_end(outer)  # one block of SUM_BLOCK bytes
        blk = builder.phi(i64)
        total = builder.phi(vec)
        end = builder.add(blk, const(SUM_BLOCK))
        end = builder.select(builder.icmp_signed("<", end, count), end, count)
        builder.branch(inner)

        builder.position_at_end(inner)  # two bytes per iteration into four independent accumulators
        c = builder.phi(i64)
        accs = [builder.phi(vec) for _ in range(4)]
        c1 = builder.add(c, const(1))
        code0 = builder.zext(builder.load(builder.gep(cod, [builder.add(cbase, c)])), i64)
        code1 = builder.zext(builder.load(builder.gep(cod, [builder.add(cbase, c1)])), i64)
        new = [builder.fadd(accs[0], row(c, code0, False)), builder.fadd(accs[1], row(c, code0, True)),
               builder.fadd(accs[2], row(c1, code1, False)), builder.fadd(accs[3], row(c1, code1, True))]
        c_next = builder.add(c, const(2))
        c.add_incoming(blk, outer)
        c.add_incoming(c_next, inner)
        for acc, value in zip(accs, new, strict=True):
            acc.add_incoming(zero, outer)
            acc.add_incoming(value, inner)
        builder.cbranch(builder.icmp_signed("<", c_next, end), inner, block_done)

        builder.position_at_end(block_done)
        block_sum = builder.fadd(builder.fadd(new[0], new[1]), builder.fadd(new[2], new[3]))
        total_next = builder.fadd(total, block_sum)
        blk_next = builder.add(blk, const(SUM_BLOCK))
        blk.add_incoming(const(0), entry)
        blk.add_incoming(blk_next, block_done)
        total.add_incoming(start, entry)
        total.add_incoming(total_next, block_done)
        builder.cbranch(builder.icmp_signed("<", blk_next, count), outer, done)

        builder.position_at_end(done)
        result = builder.phi(vec)
        result.add_incoming(start, entry)
        result.add_incoming(total_next, block_done)
        builder.store(result, target, align=4)
        return context.get_dummy_value()

    return codegen


@intrinsic
def lut_accumulate(typingctx, tables, table_base, codes, code_base, nbytes, out, out_base, width_tag):
    """out[out_base:+lanes] += Σ_{c < nbytes} tables[row(c, lo)] + tables[row(c, hi)] (nbytes even).

    For code byte c = codes[code_base + c], row(c, lo) starts at table_base + (32c + (byte & 15))·lanes
    and row(c, hi) at table_base + (32c + 16 + (byte >> 4))·lanes. The bytes are summed in blocks of
    SUM_BLOCK, each block's sum added to out in turn, so splitting a row into calls at multiples of
    SUM_BLOCK gives bit-identical results.
    """
    sig = types.void(tables, types.intp, codes, types.intp, types.intp, out, types.intp, width_tag)
    return sig, _lut_codegen(_width(width_tag))


@intrinsic
def vadd(typingctx, dst, dst_base, a, a_base, b, b_base, width_tag):
    """dst[dst_base:+lanes] = a[a_base:+lanes] + b[b_base:+lanes] (float32 rows)."""
    width = _width(width_tag)
    sig = types.void(dst, types.intp, a, types.intp, b, types.intp, width_tag)

    def codegen(context, builder, signature, args):
        dst_v, dbase, a_v, abase, b_v, bbase, _ = args
        vec = ir.VectorType(ir.FloatType(), width)
        ptrs = [_data(context, builder, signature.args[i], v) for i, v in ((0, dst_v), (2, a_v), (4, b_v))]
        x = builder.load(_row_ptr(builder, ptrs[1], abase, vec), align=4)
        y = builder.load(_row_ptr(builder, ptrs[2], bbase, vec), align=4)
        builder.store(builder.fadd(x, y), _row_ptr(builder, ptrs[0], dbase, vec), align=4)
        return context.get_dummy_value()

    return sig, codegen


__all__ = ["BYTE_ROWS", "NIBBLE_ROWS", "SUM_BLOCK", "lut_accumulate", "vadd"]
