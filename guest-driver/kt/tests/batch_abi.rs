//! Proves that the batch ioctls' structs, numbers and constants in
//! `kt::ioctl` agree with proto/include/kerntransport.h: compiles a small C
//! program against the header with the system C compiler and compares what
//! it prints. (proto/tests/c_layout.rs does the same for kt-proto.)

use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use kt::ioctl::{
    KtIocMsg, KtIocMsgvec, KT_IOC_RECVV, KT_IOC_SENDV, KT_IOC_VEC_MAX, KT_MSG_F_TRUNC,
};

const C_SOURCE: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include "kerntransport.h"
int main(void)
{
	printf("size.msg %zu\n", sizeof(struct kt_ioc_msg));
	printf("off.msg.buf %zu\n", offsetof(struct kt_ioc_msg, buf));
	printf("off.msg.len %zu\n", offsetof(struct kt_ioc_msg, len));
	printf("off.msg.flags %zu\n", offsetof(struct kt_ioc_msg, flags));
	printf("size.vec %zu\n", sizeof(struct kt_ioc_msgvec));
	printf("off.vec.msgs %zu\n", offsetof(struct kt_ioc_msgvec, msgs));
	printf("off.vec.count %zu\n", offsetof(struct kt_ioc_msgvec, count));
	printf("off.vec.flags %zu\n", offsetof(struct kt_ioc_msgvec, flags));
	printf("KT_IOC_SENDV %lu\n", (unsigned long)KT_IOC_SENDV);
	printf("KT_IOC_RECVV %lu\n", (unsigned long)KT_IOC_RECVV);
	printf("KT_IOC_VEC_MAX %lu\n", (unsigned long)KT_IOC_VEC_MAX);
	printf("KT_MSG_F_TRUNC %lu\n", (unsigned long)KT_MSG_F_TRUNC);
	return 0;
}
"#;

fn c_values() -> HashMap<String, u64> {
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto/include");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let src = dir.join("kt_batch_abi.c");
    let bin = dir.join("kt_batch_abi");
    std::fs::write(&src, C_SOURCE).expect("write the C source");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .status()
        .unwrap_or_else(|e| panic!("cannot run C compiler {cc}: {e}"));
    assert!(status.success(), "compiling against the header failed");
    let run = Command::new(&bin).output().expect("run the C program");
    assert!(run.status.success());
    String::from_utf8(run.stdout)
        .expect("utf8")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse().expect("a number")))
        .collect()
}

#[test]
fn batch_ioctl_abi_matches_the_header() {
    let c = c_values();
    let get = |k: &str| *c.get(k).unwrap_or_else(|| panic!("C side printed no {k}"));
    assert_eq!(get("size.msg"), size_of::<KtIocMsg>() as u64);
    assert_eq!(get("off.msg.buf"), offset_of!(KtIocMsg, buf) as u64);
    assert_eq!(get("off.msg.len"), offset_of!(KtIocMsg, len) as u64);
    assert_eq!(get("off.msg.flags"), offset_of!(KtIocMsg, flags) as u64);
    assert_eq!(get("size.vec"), size_of::<KtIocMsgvec>() as u64);
    assert_eq!(get("off.vec.msgs"), offset_of!(KtIocMsgvec, msgs) as u64);
    assert_eq!(get("off.vec.count"), offset_of!(KtIocMsgvec, count) as u64);
    assert_eq!(get("off.vec.flags"), offset_of!(KtIocMsgvec, flags) as u64);
    assert_eq!(get("KT_IOC_SENDV"), u64::from(KT_IOC_SENDV));
    assert_eq!(get("KT_IOC_RECVV"), u64::from(KT_IOC_RECVV));
    assert_eq!(get("KT_IOC_VEC_MAX"), KT_IOC_VEC_MAX as u64);
    assert_eq!(get("KT_MSG_F_TRUNC"), u64::from(KT_MSG_F_TRUNC));
}
