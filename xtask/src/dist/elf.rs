//! Is a binary static and stripped, for the right machine? Read from its ELF
//! headers, so that a regression (a dynamic libc, a static-pie, an
//! interpreter, debug symbols) fails `cargo xtask dist` rather than a user's
//! first run on a host without them.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};
use object::{
    LittleEndian,
    elf::{EM_AARCH64, EM_X86_64, ET_EXEC, FileHeader64, PT_DYNAMIC, PT_INTERP, SHT_DYNAMIC, SHT_SYMTAB},
    read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _},
};

use super::Arch;

pub fn check_static(path: &Path, arch: Arch) -> Result<()> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let data = &*data;
    let bad = |what: &str| anyhow::anyhow!("{}: {what}", path.display());
    // Both architectures are 64-bit little-endian.
    let header =
        FileHeader64::<LittleEndian>::parse(data).map_err(|e| bad(&format!("not a 64-bit ELF: {e}")))?;
    let endian = header.endian().map_err(|e| bad(&e.to_string()))?;
    let machine = match arch {
        Arch::X86_64 => EM_X86_64,
        Arch::Aarch64 => EM_AARCH64,
    };
    if header.e_machine(endian) != machine {
        bail!(bad(&format!("ELF machine {} is not {}", header.e_machine(endian), arch.name())));
    }
    if header.e_type(endian) != ET_EXEC {
        bail!(bad(&format!(
            "ELF type {} is not a fixed-address executable (ET_EXEC; a static-pie is ET_DYN with a dynamic section)",
            header.e_type(endian)
        )));
    }
    for segment in header.program_headers(endian, data).map_err(|e| bad(&e.to_string()))? {
        match segment.p_type(endian) {
            PT_INTERP => bail!(bad("has a program interpreter (PT_INTERP): dynamically linked")),
            PT_DYNAMIC => bail!(bad("has a PT_DYNAMIC segment: not a plain static executable")),
            _ => {}
        }
    }
    for section in header.section_headers(endian, data).map_err(|e| bad(&e.to_string()))? {
        match section.sh_type(endian) {
            SHT_DYNAMIC => bail!(bad("has a dynamic section")),
            SHT_SYMTAB => bail!(bad("has a symbol table: not stripped")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary is linked the usual way (glibc, PIE, interpreter).
    #[test]
    fn a_dynamically_linked_executable_is_refused() {
        let exe = std::env::current_exe().expect("current_exe");
        let arch = Arch::host().expect("an x86_64 or aarch64 host");
        let err = check_static(&exe, arch).expect_err("a dynamic executable passed").to_string();
        assert!(err.contains("ET_DYN") || err.contains("PT_INTERP"), "{err}");
    }

    #[test]
    fn the_wrong_machine_is_refused() {
        let exe = std::env::current_exe().expect("current_exe");
        let other = Arch::ALL.into_iter().find(|&a| Some(a) != Arch::host()).expect("two architectures");
        let err = check_static(&exe, other).expect_err("another machine passed").to_string();
        assert!(err.contains("ELF machine"), "{err}");
    }
}
