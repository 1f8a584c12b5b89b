//! An eBPF instruction encoder, only as big as our programs need, and a
//! tiny assembler that resolves forward jumps to labels.
//!
//! Encoding per the kernel's instruction-set document: an 8-byte
//! `struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm; }`,
//! where `code` = operation | source | class. Jump offsets count
//! instructions from the one after the jump; the 64-bit immediate load
//! takes two slots.

/// One eBPF instruction, as the kernel reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// Destination register in one nibble, source in the other (which
    /// nibble is which follows the C bitfield order, i.e. byte order).
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// A register: R0 return value, R1..R5 arguments (clobbered by calls),
/// R6..R9 callee-saved, R10 read-only frame pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg(pub u8);

pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R5: Reg = Reg(5);
pub const R6: Reg = Reg(6);
pub const R7: Reg = Reg(7);

// Instruction classes.
const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_JMP: u8 = 0x05;
const BPF_ALU64: u8 = 0x07;
// Sizes and modes of loads.
const BPF_W: u8 = 0x00;
const BPF_H: u8 = 0x08;
const BPF_B: u8 = 0x10;
const BPF_DW: u8 = 0x18;
const BPF_IMM: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
// Operand source: the immediate (K) or the source register (X).
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
// Operations in the JMP class that are not comparisons.
const BPF_JA: u8 = 0x00;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;

/// `src_reg` of the 64-bit immediate load meaning "imm is a map fd": the
/// kernel replaces it with the map's address when loading.
pub const BPF_PSEUDO_MAP_FD: u8 = 1;

/// 64-bit ALU operations we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Alu {
    Add = 0x00,
    And = 0x50,
    Lsh = 0x60,
    Rsh = 0x70,
    Mov = 0xb0,
}

/// Conditional jumps (64-bit, unsigned comparisons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Jmp {
    Eq = 0x10,
    Gt = 0x20,
    Ge = 0x30,
    Ne = 0x50,
    Lt = 0xa0,
}

fn regs(dst: Reg, src: Reg) -> u8 {
    debug_assert!(dst.0 <= 10 && src.0 <= 10);
    if cfg!(target_endian = "little") {
        (src.0 << 4) | dst.0
    } else {
        (dst.0 << 4) | src.0
    }
}

fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: regs(dst, src),
        off,
        imm,
    }
}

impl Insn {
    /// The destination register (the nibble order undone).
    pub fn dst(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs & 0xf
        } else {
            self.regs >> 4
        }
    }

    /// The source register.
    pub fn src(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs >> 4
        } else {
            self.regs & 0xf
        }
    }
}

/// `dst = dst OP imm` on 64 bits (imm sign-extended).
pub fn alu64_imm(op: Alu, dst: Reg, imm: i32) -> Insn {
    insn(BPF_ALU64 | op as u8 | BPF_K, dst, R0, 0, imm)
}

/// `dst = dst OP src` on 64 bits.
pub fn alu64_reg(op: Alu, dst: Reg, src: Reg) -> Insn {
    insn(BPF_ALU64 | op as u8 | BPF_X, dst, src, 0, 0)
}

pub fn mov64_imm(dst: Reg, imm: i32) -> Insn {
    alu64_imm(Alu::Mov, dst, imm)
}

pub fn mov64_reg(dst: Reg, src: Reg) -> Insn {
    alu64_reg(Alu::Mov, dst, src)
}

pub fn add64_imm(dst: Reg, imm: i32) -> Insn {
    alu64_imm(Alu::Add, dst, imm)
}

pub fn add64_reg(dst: Reg, src: Reg) -> Insn {
    alu64_reg(Alu::Add, dst, src)
}

fn ldx(size: u8, dst: Reg, src: Reg, off: i16) -> Insn {
    insn(BPF_LDX | size | BPF_MEM, dst, src, off, 0)
}

/// `dst = *(u8 *)(src + off)`.
pub fn ldx_b(dst: Reg, src: Reg, off: i16) -> Insn {
    ldx(BPF_B, dst, src, off)
}

/// `dst = *(u16 *)(src + off)`, in host byte order.
pub fn ldx_h(dst: Reg, src: Reg, off: i16) -> Insn {
    ldx(BPF_H, dst, src, off)
}

/// `dst = *(u32 *)(src + off)`, in host byte order.
pub fn ldx_w(dst: Reg, src: Reg, off: i16) -> Insn {
    ldx(BPF_W, dst, src, off)
}

/// `if dst OP imm goto pc + 1 + off`.
pub fn jmp_imm(op: Jmp, dst: Reg, imm: i32, off: i16) -> Insn {
    insn(BPF_JMP | op as u8 | BPF_K, dst, R0, off, imm)
}

/// `if dst OP src goto pc + 1 + off`.
pub fn jmp_reg(op: Jmp, dst: Reg, src: Reg, off: i16) -> Insn {
    insn(BPF_JMP | op as u8 | BPF_X, dst, src, off, 0)
}

/// `goto pc + 1 + off`.
pub fn ja(off: i16) -> Insn {
    insn(BPF_JMP | BPF_JA, R0, R0, off, 0)
}

/// Calls helper number `helper` (arguments in R1..R5, result in R0).
pub fn call(helper: i32) -> Insn {
    insn(BPF_JMP | BPF_CALL, R0, R0, 0, helper)
}

/// Returns R0.
pub fn exit() -> Insn {
    insn(BPF_JMP | BPF_EXIT, R0, R0, 0, 0)
}

/// `dst = &map` for the map behind file descriptor `fd`: the two-slot
/// 64-bit immediate load, tagged so the kernel resolves the fd.
pub fn ld_map_fd(dst: Reg, fd: i32) -> [Insn; 2] {
    [
        insn(
            BPF_LD | BPF_DW | BPF_IMM,
            dst,
            Reg(BPF_PSEUDO_MAP_FD),
            0,
            fd,
        ),
        // Upper 32 bits of the immediate; zero for a map fd.
        Insn::default(),
    ]
}

/// A jump target inside an [`Asm`].
#[derive(Clone, Copy, Debug)]
pub struct Label(usize);

/// An instruction list with labels: jumps name a label, and [`Asm::finish`]
/// writes the offsets once every label is bound. Hand-counting offsets is
/// how such programs go wrong.
#[derive(Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    /// (index of a jump instruction, its target).
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `label` to the next instruction.
    pub fn bind(&mut self, label: Label) {
        debug_assert!(self.labels[label.0].is_none(), "label bound twice");
        self.labels[label.0] = Some(self.insns.len());
    }

    pub fn push(&mut self, insn: Insn) -> &mut Asm {
        self.insns.push(insn);
        self
    }

    pub fn extend(&mut self, insns: impl IntoIterator<Item = Insn>) -> &mut Asm {
        self.insns.extend(insns);
        self
    }

    /// `if dst OP imm goto label`.
    pub fn jmp_imm(&mut self, op: Jmp, dst: Reg, imm: i32, to: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), to));
        self.push(jmp_imm(op, dst, imm, 0))
    }

    /// `if dst OP src goto label`.
    pub fn jmp_reg(&mut self, op: Jmp, dst: Reg, src: Reg, to: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), to));
        self.push(jmp_reg(op, dst, src, 0))
    }

    /// `goto label`.
    pub fn ja(&mut self, to: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), to));
        self.push(ja(0))
    }

    /// The instructions with every jump offset filled in.
    pub fn finish(mut self) -> Result<Vec<Insn>, String> {
        for &(at, Label(l)) in &self.fixups {
            let target = self.labels[l].ok_or_else(|| format!("label {l} never bound"))?;
            let off = target as i64 - (at as i64 + 1);
            self.insns[at].off =
                i16::try_from(off).map_err(|_| format!("jump at {at} too far ({off})"))?;
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insn_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn ld_map_fd_is_the_two_slot_pseudo_load() {
        let [a, b] = ld_map_fd(R1, 7);
        assert_eq!(a.code, 0x18); // BPF_LD | BPF_DW | BPF_IMM
        assert_eq!(a.dst(), 1);
        assert_eq!(a.src(), BPF_PSEUDO_MAP_FD);
        assert_eq!(a.imm, 7);
        assert_eq!(a.off, 0);
        assert_eq!(b, Insn::default());
        if cfg!(target_endian = "little") {
            assert_eq!(a.regs, 0x11);
        }
    }

    #[test]
    fn opcodes() {
        assert_eq!(mov64_imm(R0, 2).code, 0xb7);
        assert_eq!(mov64_reg(R6, R1).code, 0xbf);
        assert_eq!(add64_imm(R4, 14).code, 0x07);
        assert_eq!(add64_reg(R4, R5).code, 0x0f);
        assert_eq!(alu64_imm(Alu::And, R5, 0xf).code, 0x57);
        assert_eq!(alu64_imm(Alu::Lsh, R5, 2).code, 0x67);
        assert_eq!(alu64_imm(Alu::Rsh, R5, 4).code, 0x77);
        assert_eq!(ldx_b(R5, R2, 14).code, 0x71);
        assert_eq!(ldx_h(R5, R2, 12).code, 0x69);
        assert_eq!(ldx_w(R2, R6, 0).code, 0x61);
        assert_eq!(jmp_imm(Jmp::Ne, R5, 17, 0).code, 0x55);
        assert_eq!(jmp_reg(Jmp::Gt, R4, R3, 0).code, 0x2d);
        assert_eq!(ja(0).code, 0x05);
        assert_eq!(call(51), insn(0x85, R0, R0, 0, 51));
        assert_eq!(exit().code, 0x95);
        let l = ldx_h(R5, R7, -6);
        assert_eq!((l.dst(), l.src(), l.off), (5, 7, -6));
    }

    #[test]
    fn jump_offsets_count_from_the_next_instruction() {
        let mut a = Asm::new();
        let fwd = a.label();
        let back = a.label();
        a.bind(back);
        a.jmp_imm(Jmp::Eq, R1, 0, fwd); // 0 -> 4: off 3
        a.extend(ld_map_fd(R1, 3)); // 1, 2: two slots
        a.ja(back); // 3 -> 0: off -4
        a.bind(fwd);
        a.push(exit()); // 4
        let p = a.finish().unwrap();
        assert_eq!(p.len(), 5);
        assert_eq!(p[0].off, 3);
        assert_eq!(p[3].off, -4);
    }

    #[test]
    fn unbound_label_is_an_error() {
        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        assert!(a.finish().unwrap_err().contains("never bound"));
    }
}
