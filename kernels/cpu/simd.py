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


def _broadcast(builder, value, vec):
    """A ``vec`` with every lane ``value`` (a scalar computed at run time)."""
    i32 = ir.IntType(32)
    lane = builder.insert_element(ir.Constant(vec, None), value, ir.Constant(i32, 0))
    zeros = ir.Constant(ir.VectorType(i32, vec.count), [0] * vec.count)
    return builder.shuffle_vector(lane, ir.Constant(vec, None), zeros)


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




# --- Register-table kernels: 16-entry tables looked up with a byte shuffle (T-MAC's method) ----------------
#
# A table holds the 16 subset sums of 4 activations as unsigned 16-bit integers (round(sum / scale) +
# TABLE_BIAS), split into a low-byte and a high-byte table of 16 bytes each, so that each fits the
# 16-byte lane of a byte shuffle (pshufb; NEON's tbl). One shuffle looks up the entries of TILE_ROWS
# weight rows at once (one per byte lane). 16-bit entries, not T-MAC's 8-bit ones: an 8-bit table
# rounds every lookup to 1/127 of the block's largest subset sum, about 256 times the two-byte table's
# rounding, which costs twice the shuffles (the measured errors: benchmarks/results/inference.md).

TILE_ROWS = 64  # weight rows per tile: one byte lane each (one AVX-512, two AVX2, four SSE registers)
TABLE_BIAS = 32768  # a table entry is round(sum / scale) + TABLE_BIAS in [1, 65535]
TABLE_BYTES = 64  # table bytes per code byte: low, high bytes of the low nibble's table, then the high's
MAX_TABLE_CALL = 128  # code bytes per table_dot call: the 16-bit lanes hold 2·128 sums of bytes <= 255

# Which byte shuffle table_dot emits, as the length of a tuple argument (a compile-time constant that
# is part of the compiled function's type, so every kind is its own cached specialization).
SHUFFLE_KINDS = {"generic": 1, "ssse3": 2, "avx2": 3, "avx512": 4}
_PSHUFB = {2: ("llvm.x86.ssse3.pshuf.b.128", 16), 3: ("llvm.x86.avx2.pshuf.b", 32),
           4: ("llvm.x86.avx512.pshuf.b.512", 64)}


def host_shuffle() -> str:
    """The widest byte shuffle this CPU has ("avx512", "avx2", "ssse3"), or "generic" (element by element,
    any CPU; also when numba compiles for a named CPU other than this one)."""
    import numba
    from llvmlite import binding

    if numba.config.CPU_NAME not in (None, "host"):
        return "generic"
    features = binding.get_host_cpu_features()
    for name, flag in (("avx512", "avx512bw"), ("avx2", "avx2"), ("ssse3", "ssse3")):
        if features.get(flag):
            return name
    return "generic"


def _shuffle(builder, kind: int, table16, index):
    """<TILE_ROWS x i8>: table16[index[k] & 15] for every lane k (indices are < 16)."""
    i8 = ir.IntType(8)
    if kind == 1:
        result = ir.Constant(ir.VectorType(i8, TILE_ROWS), None)
        for k in range(TILE_ROWS):
            entry = builder.extract_element(table16, builder.extract_element(index, ir.Constant(ir.IntType(32), k)))
            result = builder.insert_element(result, entry, ir.Constant(ir.IntType(32), k))
        return result
    name, lanes = _PSHUFB[kind]
    vec = ir.VectorType(i8, lanes)
    fn = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(vec, [vec, vec]), name)
    table = builder.shuffle_vector(table16, table16, ir.Constant(ir.VectorType(ir.IntType(32), lanes),
                                                                  [k % 16 for k in range(lanes)]))
    parts = []
    for start in range(0, TILE_ROWS, lanes):
        part = index if lanes == TILE_ROWS else builder.shuffle_vector(
            index, index, ir.Constant(ir.VectorType(ir.IntType(32), lanes), list(range(start, start + lanes))))
        parts.append(builder.call(fn, [table, part]))
    while len(parts) > 1:  # concatenate pairwise back to TILE_ROWS lanes
        parts = [builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 2 * a.type.count),
                                                          list(range(2 * a.type.count))))
                 for a, b in zip(parts[::2], parts[1::2], strict=True)]
    return parts[0]


PREFETCH_BYTES = 1024  # how far ahead table_dot prefetches its code bytes


def _prefetch(builder, pointer) -> None:
    """llvm.prefetch(pointer, read, high locality, data): a hint, never a fault."""
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fn = builder.module.globals.get("llvm.prefetch.p0i8") or ir.Function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
    builder.call(fn, [builder.bitcast(pointer, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])


def _table_dot_codegen(kind: int):
    def codegen(context, builder, signature, args):
        codes_v, cbase, count, tables_v, tbase, scale, weights_v, wbase, out_v, obase, _ = args
        cod = _data(context, builder, signature.args[0], codes_v)
        tab = _data(context, builder, signature.args[3], tables_v)
        wts = _data(context, builder, signature.args[6], weights_v)
        dst = _data(context, builder, signature.args[8], out_v)
        i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
        v8 = ir.VectorType(i8, TILE_ROWS)
        v16 = ir.VectorType(i16, TILE_ROWS // 2)
        v32 = ir.VectorType(i32, TILE_ROWS // 2)
        const = lambda v: ir.Constant(i64, v)  # noqa: E731

        def splat(vec, value):
            return ir.Constant(vec, [value] * vec.count)

        def load16(offset):
            return builder.load(_row_ptr(builder, tab, offset, ir.VectorType(i8, 16)), align=1)

        entry = builder.block
        loop = builder.append_basic_block("tab.bytes")
        done = builder.append_basic_block("tab.done")
        zero = ir.Constant(v16, None)
        builder.cbranch(builder.icmp_signed(">", count, const(0)), loop, done)

        builder.position_at_end(loop)
        c = builder.phi(i64)
        # Per table byte kind (low, high): the 16-bit sum of byte pairs (wrapping) and the sum of the odd
        # bytes; the even bytes' sum is their difference (exact: it stays below 2^16).
        accs = [builder.phi(v16) for _ in range(4)]
        offset = builder.add(cbase, builder.mul(c, const(TILE_ROWS)))
        # The codes stream from memory once per call: ask for them PREFETCH_BYTES ahead (one core's hardware
        # prefetcher alone leaves the loop waiting on DRAM).
        _prefetch(builder, builder.gep(cod, [builder.add(offset, const(PREFETCH_BYTES))]))
        word = builder.load(_row_ptr(builder, cod, offset, v8), align=1)
        low = builder.and_(word, splat(v8, 15))
        high = builder.and_(builder.lshr(word, splat(v8, 4)), splat(v8, 15))
        t0 = builder.add(tbase, builder.mul(c, const(TABLE_BYTES)))
        looked = [_shuffle(builder, kind, load16(builder.add(t0, const(16 * q))), low if q < 2 else high)
                  for q in range(4)]  # low nibble: low, high bytes; high nibble: low, high bytes
        new = []
        for part in range(2):  # 0: the tables' low bytes (looked[0], looked[2]), 1: their high bytes
            a = builder.bitcast(looked[part], v16)
            b = builder.bitcast(looked[part + 2], v16)
            eight = splat(v16, 8)
            new.append(builder.add(accs[2 * part], builder.add(a, b)))
            new.append(builder.add(accs[2 * part + 1], builder.add(builder.lshr(a, eight), builder.lshr(b, eight))))
        c_next = builder.add(c, const(1))
        c.add_incoming(const(0), entry)
        c.add_incoming(c_next, loop)
        for acc, value in zip(accs, new, strict=True):
            acc.add_incoming(zero, entry)
            acc.add_incoming(value, loop)
        builder.cbranch(builder.icmp_signed("<", c_next, count), loop, done)

        builder.position_at_end(done)
        finals = []
        for index in range(4):
            phi = builder.phi(v16)
            phi.add_incoming(zero, entry)
            phi.add_incoming(new[index], loop)
            finals.append(phi)
        halves = []
        for parity in range(2):  # 0: even rows, 1: odd rows
            parts = []
            for part in range(2):
                pairs, odd = finals[2 * part], finals[2 * part + 1]
                value = odd if parity else builder.sub(pairs, builder.shl(odd, splat(v16, 8)))
                parts.append(builder.zext(value, v32))
            halves.append(builder.add(builder.shl(parts[1], splat(v32, 8)), parts[0]))
        order = [k // 2 + (TILE_ROWS // 2) * (k % 2) for k in range(TILE_ROWS)]
        rows = builder.shuffle_vector(halves[0], halves[1], ir.Constant(ir.VectorType(i32, TILE_ROWS), order))
        # minus the bias of 2·nbytes entries (exact in int32), then to float: scale · weight · sum
        bias = builder.mul(builder.trunc(count, i32), ir.Constant(i32, 2 * TABLE_BIAS))
        vi32 = ir.VectorType(i32, TILE_ROWS)
        bias_v = _broadcast(builder, bias, vi32)
        vf = ir.VectorType(ir.FloatType(), TILE_ROWS)
        value = builder.sitofp(builder.sub(rows, bias_v), vf)
        scale_v = _broadcast(builder, scale, vf)
        weights = builder.load(_row_ptr(builder, wts, wbase, vf), align=4)
        target = _row_ptr(builder, dst, obase, vf)
        total = builder.fadd(builder.load(target, align=4), builder.fmul(builder.fmul(value, scale_v), weights))
        builder.store(total, target, align=4)
        return context.get_dummy_value()

    return codegen


@intrinsic
def table_dot(typingctx, codes, code_base, nbytes, tables, table_base, scale, weights, weight_base, out, out_base,
              kind_tag):
    """out[out_base + k] += weights[weight_base + k] · scale · (Σ_{c < nbytes} entry(c, low nibble)
    + entry(c, high nibble) − 2·nbytes·TABLE_BIAS) for the k < TILE_ROWS rows of a tile (float32).

    ``codes[code_base + c·TILE_ROWS + k]`` is code byte c of tile row k (uint8); the tables of code byte c
    are the TABLE_BYTES bytes at ``tables[table_base + c·TABLE_BYTES]``: the low nibble's table (16 low
    bytes, 16 high bytes), then the high nibble's; entry = low byte + 256·high byte. The sum over the
    bytes is exact (integers); ``nbytes`` <= MAX_TABLE_CALL. The shuffle is ``kind_tag``'s: a tuple of
    SHUFFLE_KINDS[name] items.
    """
    if not isinstance(kind_tag, types.UniTuple) or kind_tag.count not in _PSHUFB.keys() | {1}:
        raise errors.TypingError(f"the shuffle kind must be a tuple of 1 to 4 items, got {kind_tag}")
    sig = types.void(codes, types.intp, types.intp, tables, types.intp, types.float32, weights, types.intp, out,
                     types.intp, kind_tag)
    return sig, _table_dot_codegen(kind_tag.count)


@intrinsic
def quantize_chunks(typingctx, src, src_base, nchunks, inv_scale, tables, table_base, first):
    """The tables of ``nchunks`` 4-float chunks src[src_base + 4q : +4], numbered from ``first`` (see
    :func:`table_dot`): entry e of chunk q is int(Σ_{bit k of e} src[4q + k] · inv_scale + TABLE_BIAS
    + 0.5); with c = first + q, its low byte goes to tables[table_base + (c // 2)·TABLE_BYTES + 32·(c % 2)
    + e] and its high byte 16 bytes later. The caller keeps |Σ src · inv_scale| below 32767."""
    sig = types.void(src, types.intp, types.intp, types.float32, tables, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        src_v, sbase, count, inv, tab_v, tbase, first = args
        data = _data(context, builder, signature.args[0], src_v)
        tab = _data(context, builder, signature.args[4], tab_v)
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        v16f = ir.VectorType(f32, 16)
        const = lambda v: ir.Constant(i64, v)  # noqa: E731
        masks = [ir.Constant(v16f, [float((e >> k) & 1) for e in range(16)]) for k in range(4)]
        entry = builder.block
        loop = builder.append_basic_block("quant.chunks")
        done = builder.append_basic_block("quant.done")
        builder.cbranch(builder.icmp_signed(">", count, const(0)), loop, done)
        builder.position_at_end(loop)
        q = builder.phi(i64)
        chunk = builder.load(_row_ptr(builder, data, builder.add(sbase, builder.mul(q, const(4))),
                                      ir.VectorType(f32, 4)), align=4)
        total = ir.Constant(v16f, [TABLE_BIAS + 0.5] * 16)
        for k in range(4):
            lane = builder.fmul(builder.extract_element(chunk, ir.Constant(i32, k)), inv)
            spread = _broadcast(builder, lane, v16f)
            total = builder.fadd(total, builder.fmul(spread, masks[k], flags=("contract",)), flags=("contract",))
        words = builder.trunc(builder.fptosi(total, ir.VectorType(i32, 16)), ir.VectorType(ir.IntType(16), 16))
        split = builder.shuffle_vector(builder.bitcast(words, ir.VectorType(ir.IntType(8), 32)),
                                       ir.Constant(ir.VectorType(ir.IntType(8), 32), None),
                                       ir.Constant(ir.VectorType(i32, 32),
                                                   [2 * e for e in range(16)] + [2 * e + 1 for e in range(16)]))
        c = builder.add(first, q)
        offset = builder.add(builder.mul(builder.lshr(c, const(1)), const(TABLE_BYTES)),
                             builder.mul(builder.and_(c, const(1)), const(32)))
        builder.store(split, _row_ptr(builder, tab, builder.add(tbase, offset), ir.VectorType(ir.IntType(8), 32)),
                      align=1)
        q_next = builder.add(q, const(1))
        q.add_incoming(const(0), entry)
        q.add_incoming(q_next, loop)
        builder.cbranch(builder.icmp_signed("<", q_next, count), loop, done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def chunk_abs_max(typingctx, src, src_base, nquads):
    """(max over 4-entry chunks q < 4·nquads of Σ_k |src[src_base + 4q + k]|, Σ of those sums): the first
    bounds every subset sum of a chunk; the second is NaN or inf when an entry is (float32)."""
    sig = types.UniTuple(types.float32, 2)(src, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        src_v, sbase, count = args
        data = _data(context, builder, signature.args[0], src_v)
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        vec = ir.VectorType(f32, 16)
        const = lambda v: ir.Constant(i64, v)  # noqa: E731
        mask = lambda order: ir.Constant(ir.VectorType(i32, 16), order)  # noqa: E731
        fabs = builder.module.globals.get("llvm.fabs.v16f32") or ir.Function(
            builder.module, ir.FunctionType(vec, [vec]), "llvm.fabs.v16f32")
        zero = ir.Constant(vec, None)
        entry = builder.block
        loop = builder.append_basic_block("peak.quads")
        done = builder.append_basic_block("peak.done")
        builder.cbranch(builder.icmp_signed(">", count, const(0)), loop, done)
        builder.position_at_end(loop)
        q = builder.phi(i64)
        best = builder.phi(vec)
        total = builder.phi(vec)
        quad = builder.load(_row_ptr(builder, data, builder.add(sbase, builder.mul(q, const(16))), vec), align=4)
        a = builder.call(fabs, [quad])
        a = builder.fadd(a, builder.shuffle_vector(a, a, mask([k ^ 1 for k in range(16)])))
        a = builder.fadd(a, builder.shuffle_vector(a, a, mask([k ^ 2 for k in range(16)])))  # lanes: their chunk's sum
        new_best = builder.select(builder.fcmp_ordered(">", a, best), a, best)
        new_total = builder.fadd(total, a)
        q_next = builder.add(q, const(1))
        q.add_incoming(const(0), entry)
        q.add_incoming(q_next, loop)
        best.add_incoming(zero, entry)
        best.add_incoming(new_best, loop)
        total.add_incoming(zero, entry)
        total.add_incoming(new_total, loop)
        builder.cbranch(builder.icmp_signed("<", q_next, count), loop, done)
        builder.position_at_end(done)
        phis = []
        for value in (new_best, new_total):
            phi = builder.phi(vec)
            phi.add_incoming(zero, entry)
            phi.add_incoming(value, loop)
            phis.append(phi)
        results = []
        for phi, reduce in zip(phis, ("max", "sum"), strict=True):
            out = builder.extract_element(phi, ir.Constant(i32, 0))
            for k in range(1, 16):
                lane = builder.extract_element(phi, ir.Constant(i32, k))
                out = (builder.select(builder.fcmp_ordered(">", lane, out), lane, out) if reduce == "max"
                       else builder.fadd(out, lane))
            results.append(out)
        return context.make_tuple(builder, signature.return_type, results)

    return sig, codegen



@intrinsic
def axpy8(typingctx, dst, dst_base, src, src_base, scale, first):
    """dst[dst_base:+8] = (0 if first else dst[dst_base:+8]) + scale · src[src_base:+8] (float32 rows;
    dst_base need not be aligned)."""
    sig = types.void(dst, types.intp, src, types.intp, types.float32, types.boolean)

    def codegen(context, builder, signature, args):
        dst_v, dbase, src_v, sbase, scale, first = args
        vec = ir.VectorType(ir.FloatType(), 8)
        d = _row_ptr(builder, _data(context, builder, signature.args[0], dst_v), dbase, vec)
        x = builder.load(_row_ptr(builder, _data(context, builder, signature.args[2], src_v), sbase, vec), align=4)
        spread = _broadcast(builder, scale, vec)
        start = builder.select(first, ir.Constant(vec, None), builder.load(d, align=4))
        builder.store(builder.fadd(start, builder.fmul(spread, x)), d, align=4)
        return context.get_dummy_value()

    return sig, codegen


__all__ = ["BYTE_ROWS", "MAX_TABLE_CALL", "NIBBLE_ROWS", "SHUFFLE_KINDS", "SUM_BLOCK", "TABLE_BIAS", "TABLE_BYTES",
           "TILE_ROWS", "axpy8", "chunk_abs_max", "host_shuffle", "lut_accumulate", "quantize_chunks", "table_dot",
           "vadd"]
