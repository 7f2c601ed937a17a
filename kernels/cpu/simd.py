"""Explicit SIMD for the packed-BQQ matmul: numba intrinsics that emit LLVM vector code.

numba's loop vectorizer leaves short token loops scalar (its vector body needs 32 or more iterations,
and the accumulator may alias the table), so the two hot operations are written here as LLVM IR with
``<lanes x float>`` values, which LLVM lowers to AVX2/AVX-512/NEON/SSE as the CPU allows:

* :func:`lut_sum` / :func:`lut_accumulate`: out (+)= Σ over ``nbytes`` code bytes of two table rows
  each (the low and the high nibble's sum of activations), in four independent vector registers;
* :func:`vadd`: dst = a + b over one row of ``lanes`` floats (table construction).

The row width is a compile-time constant taken from the *type* of the last argument, a tuple of
``lanes`` items (e.g. ``(0,) * 16``): each width is then its own, cacheable, specialization of the
calling functions. Rows are ``lanes`` consecutive float32 values.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import errors, types
from numba.extending import intrinsic

NIBBLE_ROWS = 16  # table rows per nibble: every subset of 4 columns
BYTE_ROWS = 2 * NIBBLE_ROWS  # rows per code byte: low nibble's 16, then high nibble's 16


def _width(tag) -> int:
    if not isinstance(tag, types.UniTuple) or tag.count < 1:
        raise errors.TypingError(f"the row width must be given as a non-empty tuple, got {tag}")
    return tag.count


def _data(context, builder, aryty, value):
    return context.make_array(aryty)(context, builder, value).data


def _row_ptr(builder, base, offset, vec):
    return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())


def _lut_codegen(width: int, accumulate: bool):
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

        pre = builder.block
        loop = builder.append_basic_block("lut.loop")
        done = builder.append_basic_block("lut.done")
        builder.cbranch(builder.icmp_signed(">", count, const(0)), loop, done)
        builder.position_at_end(loop)
        c = builder.phi(i64)
        accs = [builder.phi(vec) for _ in range(4)]
        # Two bytes per iteration into four independent accumulators: the adds overlap in the pipeline.
        c1 = builder.add(c, const(1))
        code0 = builder.zext(builder.load(builder.gep(cod, [builder.add(cbase, c)])), i64)
        code1 = builder.zext(builder.load(builder.gep(cod, [builder.add(cbase, c1)])), i64)
        new = [builder.fadd(accs[0], row(c, code0, False)), builder.fadd(accs[1], row(c, code0, True)),
               builder.fadd(accs[2], row(c1, code1, False)), builder.fadd(accs[3], row(c1, code1, True))]
        c_next = builder.add(c, const(2))
        c.add_incoming(const(0), pre)
        c.add_incoming(c_next, loop)
        for acc, value in zip(accs, new, strict=True):
            acc.add_incoming(zero, pre)
            acc.add_incoming(value, loop)
        builder.cbranch(builder.icmp_signed("<", c_next, count), loop, done)
        builder.position_at_end(done)
        finals = []
        for value in new:
            phi = builder.phi(vec)
            phi.add_incoming(zero, pre)
            phi.add_incoming(value, loop)
            finals.append(phi)
        total = builder.fadd(builder.fadd(finals[0], finals[1]), builder.fadd(finals[2], finals[3]))
        target = _row_ptr(builder, dst, obase, vec)
        if accumulate:
            total = builder.fadd(builder.load(target, align=4), total)
        builder.store(total, target, align=4)
        return context.get_dummy_value()

    return codegen


def _lut_signature(tables, codes, out, width_tag):
    return types.void(tables, types.intp, codes, types.intp, types.intp, out, types.intp, width_tag)


@intrinsic
def lut_sum(typingctx, tables, table_base, codes, code_base, nbytes, out, out_base, width_tag):
    """out[out_base:+lanes] = Σ_{c < nbytes} tables[row(c, lo)] + tables[row(c, hi)] (nbytes even).

    For code byte c = codes[code_base + c], row(c, lo) starts at table_base + (32c + (byte & 15))·lanes
    and row(c, hi) at table_base + (32c + 16 + (byte >> 4))·lanes.
    """
    return _lut_signature(tables, codes, out, width_tag), _lut_codegen(_width(width_tag), accumulate=False)


@intrinsic
def lut_accumulate(typingctx, tables, table_base, codes, code_base, nbytes, out, out_base, width_tag):
    """As :func:`lut_sum`, but adds the sum to out[out_base:+lanes]."""
    return _lut_signature(tables, codes, out, width_tag), _lut_codegen(_width(width_tag), accumulate=True)


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


__all__ = ["BYTE_ROWS", "NIBBLE_ROWS", "lut_accumulate", "lut_sum", "vadd"]
