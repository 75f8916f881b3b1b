//! Loads an artifact's relocatable ELF object into executable memory.
//!
//! Every allocated section is copied into one anonymous mapping, relocations between them are
//! applied (`R_X86_64_64`, `PC32`, `PLT32`; anything else, or a symbol the object does not
//! define, is refused with its name), and the mapping is made read-only and executable.
//! Kernels reach the outside world only through the function table they are passed, so an
//! artifact needs no dynamic linker and no file on disk.

use crate::error::{Result, RuntimeError};
use memmap2::Mmap;
use object::elf;
use object::{
    Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionIndex,
};
use std::collections::HashMap;

pub struct Code {
    _memory: Mmap,
    symbols: HashMap<String, usize>,
}

fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a.max(1)) * a.max(1)
}

impl Code {
    pub fn load(bytes: &[u8], file: &str) -> Result<Code> {
        let err = |msg: String| RuntimeError::new(file, Some("object"), msg);
        let obj =
            object::File::parse(bytes).map_err(|e| err(format!("not a valid object: {e}")))?;
        let mut placed: HashMap<SectionIndex, usize> = HashMap::new();
        let mut size = 0;
        for section in obj.sections() {
            if section.address() == 0 && section.size() > 0 && is_allocated(&section) {
                size = align_up(size, section.align() as usize);
                placed.insert(section.index(), size);
                size += section.size() as usize;
            }
        }
        let mut memory = memmap2::MmapMut::map_anon(size.max(1))
            .map_err(|e| err(format!("cannot map memory for code: {e}")))?;
        for section in obj.sections() {
            if let Some(&at) = placed.get(&section.index()) {
                let data = section.data().map_err(|e| err(e.to_string()))?;
                memory[at..at + data.len()].copy_from_slice(data);
            }
        }
        let base = memory.as_ptr() as usize;
        let symbol_address = |index| -> Result<usize> {
            let sym = obj.symbol_by_index(index).map_err(|e| err(e.to_string()))?;
            let name = sym.name().unwrap_or("?");
            let section = sym
                .section_index()
                .and_then(|s| placed.get(&s))
                .ok_or_else(|| err(format!("symbol `{name}` is not defined in the object")))?;
            Ok(base + section + sym.address() as usize)
        };
        for section in obj.sections() {
            let Some(&at) = placed.get(&section.index()) else {
                continue;
            };
            for (offset, reloc) in section.relocations() {
                let target = match reloc.target() {
                    RelocationTarget::Symbol(s) => symbol_address(s)?,
                    RelocationTarget::Section(s) => {
                        base + placed
                            .get(&s)
                            .ok_or_else(|| err("relocation to an unloaded section".into()))?
                    }
                    _ => return Err(err("unsupported relocation target".into())),
                };
                let place = at + offset as usize;
                let value = (target as i64).wrapping_add(reloc.addend());
                match reloc.flags() {
                    RelocationFlags::Elf {
                        r_type: elf::R_X86_64_64,
                    } => {
                        memory[place..place + 8].copy_from_slice(&value.to_le_bytes());
                    }
                    RelocationFlags::Elf {
                        r_type: elf::R_X86_64_PC32 | elf::R_X86_64_PLT32,
                    } => {
                        let rel = value - (base + place) as i64;
                        let rel = i32::try_from(rel)
                            .map_err(|_| err("relocation out of range".into()))?;
                        memory[place..place + 4].copy_from_slice(&rel.to_le_bytes());
                    }
                    other => return Err(err(format!("unsupported relocation {other:?}"))),
                }
            }
        }
        let mut symbols = HashMap::new();
        for sym in obj.symbols() {
            if let (Ok(name), Some(section)) = (sym.name(), sym.section_index()) {
                if let Some(&at) = placed.get(&section) {
                    symbols.insert(name.to_string(), base + at + sym.address() as usize);
                }
            }
        }
        let memory = memory
            .make_exec()
            .map_err(|e| err(format!("cannot make code executable: {e}")))?;
        Ok(Code {
            _memory: memory,
            symbols,
        })
    }

    /// The address of the function `name`, if the object defines it.
    pub fn symbol(&self, name: &str) -> Option<usize> {
        self.symbols.get(name).copied()
    }
}

fn is_allocated(section: &object::Section) -> bool {
    matches!(
        section.flags(),
        object::SectionFlags::Elf { sh_flags } if sh_flags & u64::from(elf::SHF_ALLOC) != 0
    )
}
