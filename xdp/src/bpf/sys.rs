//! The bpf(2) system call: one `#[repr(C)]` attribute struct per command we
//! use, laid out as the prefix of the kernel's `union bpf_attr` that the
//! command reads.
//!
//! The kernel accepts an attribute shorter than its own union and treats
//! the missing tail as zero, so each struct stops at the last field we
//! set; growing the kernel's union never breaks us. Field order and
//! padding follow include/uapi/linux/bpf.h (`__aligned_u64` fields are
//! `u64` here, which has the same 8-byte alignment on every Linux target).

use std::ffi::CStr;
use std::io;
use std::mem::size_of;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::insn::Insn;

// bpf(2) commands (enum bpf_cmd).
const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_TEST_RUN: u32 = 10;
const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_LINK_CREATE: u32 = 28;
const BPF_LINK_DETACH: u32 = 34;

/// Map type of an AF_XDP socket map (BPF_MAP_TYPE_XSKMAP).
pub const BPF_MAP_TYPE_XSKMAP: u32 = 17;
/// Program type of XDP programs (BPF_PROG_TYPE_XDP).
pub const BPF_PROG_TYPE_XDP: u32 = 6;
/// Attach type of XDP (BPF_XDP): the expected attach type at load and the
/// attach type of the link.
pub const BPF_XDP: u32 = 37;

/// Object names (programs, maps) hold 15 bytes and a NUL.
pub const BPF_OBJ_NAME_LEN: usize = 16;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; BPF_OBJ_NAME_LEN],
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; BPF_OBJ_NAME_LEN],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// The prefix of `struct bpf_prog_info` up to the name: the kernel fills
/// only as much as `info_len` says, so this is all we pay for.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct ProgInfoRaw {
    pub prog_type: u32,
    pub id: u32,
    pub tag: [u8; 8],
    pub jited_prog_len: u32,
    pub xlated_prog_len: u32,
    pub jited_prog_insns: u64,
    pub xlated_prog_insns: u64,
    pub load_time: u64,
    pub created_by_uid: u32,
    pub nr_map_ids: u32,
    pub map_ids: u64,
    pub name: [u8; BPF_OBJ_NAME_LEN],
}

/// The XDP program context (`struct xdp_md`), as BPF_PROG_TEST_RUN takes it
/// in `ctx_in`: offsets into the test buffer, not pointers.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

/// Byte offsets of the `xdp_md` fields the program reads.
pub mod xdp_md {
    pub const DATA: i16 = 0;
    pub const DATA_END: i16 = 4;
    pub const RX_QUEUE_INDEX: i16 = 16;
}

fn ptr<T>(p: *const T) -> u64 {
    p as usize as u64
}

/// Copies `name` into a fixed, NUL-terminated object name field: the
/// caller has checked it fits (15 bytes) and has no NUL.
pub fn obj_name(name: &str) -> [u8; BPF_OBJ_NAME_LEN] {
    let mut out = [0u8; BPF_OBJ_NAME_LEN];
    let n = name.len().min(BPF_OBJ_NAME_LEN - 1);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// bpf(cmd, attr, sizeof attr): the raw return value or the errno.
///
/// # Safety
/// `attr` must be the attribute struct `cmd` expects, and every pointer
/// in it must be valid for what the kernel does with it during the call.
unsafe fn bpf<T>(cmd: u32, attr: &mut T) -> io::Result<i64> {
    // SAFETY: forwarded to the caller; the size is that of `*attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_long,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i64)
    }
}

/// For commands that return a new file descriptor.
unsafe fn bpf_fd<T>(cmd: u32, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: forwarded to the caller.
    let fd = unsafe { bpf(cmd, attr)? };
    // SAFETY: on success these commands return a new descriptor that
    // nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// BPF_MAP_CREATE.
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_name: obj_name(name),
        ..Default::default()
    };
    // SAFETY: no pointers in this attribute.
    unsafe { bpf_fd(BPF_MAP_CREATE, &mut attr) }
}

/// BPF_MAP_UPDATE_ELEM with u32 key and value (BPF_ANY: create or replace).
pub fn map_update_u32(map: RawFd, key: u32, value: u32) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map as u32,
        key: ptr(&key),
        value: ptr(&value),
        ..Default::default()
    };
    // SAFETY: key and value outlive the call and are 4 bytes, the map's
    // key and value size.
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop) }
}

/// BPF_MAP_DELETE_ELEM with a u32 key.
pub fn map_delete_u32(map: RawFd, key: u32) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map as u32,
        key: ptr(&key),
        ..Default::default()
    };
    // SAFETY: key outlives the call and is the map's key size.
    unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop) }
}

/// BPF_PROG_LOAD of an XDP program; `log` (may be empty) receives the
/// verifier's text at `log_level`.
pub fn prog_load_xdp(
    insns: &[Insn],
    name: &str,
    license: &CStr,
    log_level: u32,
    log: &mut [u8],
) -> io::Result<OwnedFd> {
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: ptr(insns.as_ptr()),
        license: ptr(license.as_ptr()),
        prog_name: obj_name(name),
        expected_attach_type: BPF_XDP,
        ..Default::default()
    };
    if !log.is_empty() {
        attr.log_level = log_level;
        attr.log_size = log.len() as u32;
        attr.log_buf = ptr(log.as_mut_ptr());
    }
    // SAFETY: insns (Insn is the kernel's 8-byte struct bpf_insn), the
    // NUL-terminated licence and the log buffer of log_size bytes all
    // outlive the call.
    unsafe { bpf_fd(BPF_PROG_LOAD, &mut attr) }
}

/// BPF_PROG_TEST_RUN, once, on `data` with `ctx` as the `xdp_md`: the
/// program's return value.
pub fn prog_test_run_xdp(prog: RawFd, data: &[u8], ctx: &XdpMd) -> io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: prog as u32,
        data_size_in: data.len() as u32,
        data_in: ptr(data.as_ptr()),
        repeat: 1,
        ctx_size_in: size_of::<XdpMd>() as u32,
        ctx_in: ptr(ctx),
        ..Default::default()
    };
    // SAFETY: data and ctx outlive the call; no output buffers are given
    // (null data_out/ctx_out: the kernel copies nothing back but retval).
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr)? };
    Ok(attr.retval)
}

/// BPF_PROG_GET_FD_BY_ID.
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdByIdAttr {
        id,
        ..Default::default()
    };
    // SAFETY: no pointers in this attribute.
    unsafe { bpf_fd(BPF_PROG_GET_FD_BY_ID, &mut attr) }
}

/// BPF_OBJ_GET_INFO_BY_FD for a program.
pub fn prog_info(prog: RawFd) -> io::Result<ProgInfoRaw> {
    let mut info = ProgInfoRaw::default();
    let mut attr = InfoAttr {
        bpf_fd: prog as u32,
        info_len: size_of::<ProgInfoRaw>() as u32,
        info: ptr(&mut info as *mut ProgInfoRaw),
    };
    // SAFETY: info is info_len bytes and outlives the call; its pointer
    // fields are zero, so the kernel copies no arrays out.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)? };
    Ok(info)
}

/// BPF_LINK_CREATE of an XDP link on `ifindex` with XDP_FLAGS_* `flags`.
pub fn link_create_xdp(prog: RawFd, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags,
    };
    // SAFETY: no pointers in this attribute.
    unsafe { bpf_fd(BPF_LINK_CREATE, &mut attr) }
}

/// BPF_LINK_DETACH: detaches the link's program now, even while other
/// processes still hold the link's fd (a child that inherited it).
pub fn link_detach(link: RawFd) -> io::Result<()> {
    let mut attr = link as u32;
    // SAFETY: the attribute is the single u32 link_fd.
    unsafe { bpf(BPF_LINK_DETACH, &mut attr).map(drop) }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Offsets the kernel reads; a wrong one would silently feed it zeros.
    #[test]
    fn layouts_match_the_uapi() {
        assert_eq!(size_of::<MapCreateAttr>(), 44);
        assert_eq!(size_of::<MapElemAttr>(), 32);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(TestRunAttr, ctx_in), 48);
        assert_eq!(std::mem::offset_of!(TestRunAttr, flags), 64);
        assert_eq!(std::mem::offset_of!(ProgInfoRaw, name), 64);
        assert_eq!(size_of::<XdpMd>(), 24);
    }
}
