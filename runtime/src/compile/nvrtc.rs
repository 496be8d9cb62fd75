//! The only NVRTC FFI in kiln.
//!
//! NVRTC is opened from the exact file discovery found (see [`mod@crate::probe`]), never by soname
//! alone: cudarc's loader panics when the library is missing and would pick whichever
//! `libnvrtc.so` the dynamic linker sees first. `libnvrtc-builtins` is opened first from the same
//! folder, because NVRTC dlopens it by soname at compile time and a pip wheel's folder is not on
//! the linker's path. Results are read as plain `c_int` (0 = success) so that an unknown status
//! from a newer library can never be an invalid enum value.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::PathBuf;
use std::sync::OnceLock;

use cudarc::nvrtc::sys::nvrtcProgram;
use libloading::Library;

use crate::error::{Error, Result};
use crate::probe::{NvrtcInfo, toolkit};

type Prog = nvrtcProgram;

#[allow(non_snake_case)]
struct Api {
    // Keep the libraries mapped for the life of the process.
    _builtins: Option<Library>,
    _lib: Library,
    path: PathBuf,
    nvrtcVersion: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int,
    nvrtcGetNumSupportedArchs: unsafe extern "C" fn(*mut c_int) -> c_int,
    nvrtcGetSupportedArchs: unsafe extern "C" fn(*mut c_int) -> c_int,
    nvrtcGetErrorString: unsafe extern "C" fn(c_int) -> *const c_char,
    nvrtcCreateProgram:
        unsafe extern "C" fn(*mut Prog, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> c_int,
    nvrtcDestroyProgram: unsafe extern "C" fn(*mut Prog) -> c_int,
    nvrtcAddNameExpression: unsafe extern "C" fn(Prog, *const c_char) -> c_int,
    nvrtcCompileProgram: unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int,
    nvrtcGetLoweredName: unsafe extern "C" fn(Prog, *const c_char, *mut *const c_char) -> c_int,
    nvrtcGetProgramLogSize: unsafe extern "C" fn(Prog, *mut usize) -> c_int,
    nvrtcGetProgramLog: unsafe extern "C" fn(Prog, *mut c_char) -> c_int,
    nvrtcGetPTXSize: unsafe extern "C" fn(Prog, *mut usize) -> c_int,
    nvrtcGetPTX: unsafe extern "C" fn(Prog, *mut c_char) -> c_int,
    nvrtcGetCUBINSize: unsafe extern "C" fn(Prog, *mut usize) -> c_int,
    nvrtcGetCUBIN: unsafe extern "C" fn(Prog, *mut c_char) -> c_int,
}

fn load() -> Result<Api, String> {
    let tk = toolkit();
    let path = tk.nvrtc.clone().ok_or_else(|| format!("libnvrtc.so.13 not found (searched {})", tk.searched_line()))?;
    // Opening a shared library runs its initialisers; NVRTC's and its builtins' are
    // self-contained and do not depend on kiln state. The handles live as long as `Api`, which
    // lives in a process-wide `OnceLock` and is never dropped.
    let builtins = match &tk.nvrtc_builtins {
        // SAFETY: as above.
        Some(b) => Some(unsafe { Library::new(b) }.map_err(|e| format!("cannot open {}: {e}", b.display()))?),
        None => None,
    };
    // SAFETY: as above.
    let lib = unsafe { Library::new(&path) }.map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    macro_rules! sym {
        ($name:ident) => {{
            // SAFETY: the symbol is looked up by its documented NVRTC name and given the C
            // signature declared in nvrtc.h (CUDA 13.0); the library outlives the pointer (see above).
            let s = unsafe { lib.get(concat!(stringify!($name), "\0").as_bytes()) }
                .map_err(|e| format!("{} lacks {}: {e}", path.display(), stringify!($name)))?;
            *s
        }};
    }
    Ok(Api {
        nvrtcVersion: sym!(nvrtcVersion),
        nvrtcGetNumSupportedArchs: sym!(nvrtcGetNumSupportedArchs),
        nvrtcGetSupportedArchs: sym!(nvrtcGetSupportedArchs),
        nvrtcGetErrorString: sym!(nvrtcGetErrorString),
        nvrtcCreateProgram: sym!(nvrtcCreateProgram),
        nvrtcDestroyProgram: sym!(nvrtcDestroyProgram),
        nvrtcAddNameExpression: sym!(nvrtcAddNameExpression),
        nvrtcCompileProgram: sym!(nvrtcCompileProgram),
        nvrtcGetLoweredName: sym!(nvrtcGetLoweredName),
        nvrtcGetProgramLogSize: sym!(nvrtcGetProgramLogSize),
        nvrtcGetProgramLog: sym!(nvrtcGetProgramLog),
        nvrtcGetPTXSize: sym!(nvrtcGetPTXSize),
        nvrtcGetPTX: sym!(nvrtcGetPTX),
        nvrtcGetCUBINSize: sym!(nvrtcGetCUBINSize),
        nvrtcGetCUBIN: sym!(nvrtcGetCUBIN),
        _builtins: builtins,
        _lib: lib,
        path,
    })
}

fn api() -> Result<&'static Api> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(|e| Error::unavailable("NVRTC", e.clone()))
}

impl Api {
    fn err(&self, rc: c_int) -> String {
        // SAFETY: nvrtcGetErrorString accepts any value and returns a static C string (or null).
        let p = unsafe { (self.nvrtcGetErrorString)(rc) };
        if p.is_null() {
            format!("NVRTC error {rc}")
        } else {
            // SAFETY: non-null pointers from nvrtcGetErrorString point to static NUL-terminated text.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    }
}

/// Version and supported architectures of the NVRTC kiln uses (loads it on first call).
pub fn info() -> Result<NvrtcInfo> {
    let a = api()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both out-pointers are valid for writes.
    let rc = unsafe { (a.nvrtcVersion)(&mut major, &mut minor) };
    if rc != 0 {
        return Err(Error::unavailable("NVRTC", format!("nvrtcVersion failed: {}", a.err(rc))));
    }
    let mut n: c_int = 0;
    // SAFETY: valid out-pointer.
    let rc = unsafe { (a.nvrtcGetNumSupportedArchs)(&mut n) };
    let mut archs = vec![0 as c_int; n.max(0) as usize];
    // SAFETY: `archs` holds exactly the `n` entries NVRTC said it would write.
    let rc2 = if rc == 0 && n > 0 { unsafe { (a.nvrtcGetSupportedArchs)(archs.as_mut_ptr()) } } else { rc };
    if rc != 0 || rc2 != 0 {
        archs.clear();
    }
    Ok(NvrtcInfo { path: a.path.clone(), version: (major, minor), supported_archs: archs.into_iter().map(|a| a as u32).collect() })
}

/// What one NVRTC compilation produced.
pub(crate) struct Output {
    pub ptx: String,
    pub cubin: Vec<u8>,
    /// Lowered (mangled) names, one per name expression, in order.
    pub lowered: Vec<String>,
    pub log: String,
}

/// Owns a program handle; destroys it on every path.
struct Program<'a> {
    api: &'a Api,
    prog: Prog,
}

impl Drop for Program<'_> {
    fn drop(&mut self) {
        // SAFETY: `prog` was created by nvrtcCreateProgram and is destroyed exactly once, here.
        unsafe { (self.api.nvrtcDestroyProgram)(&mut self.prog) };
    }
}

impl Program<'_> {
    fn log(&self) -> String {
        let mut n = 0usize;
        // SAFETY: valid program and out-pointer.
        if unsafe { (self.api.nvrtcGetProgramLogSize)(self.prog, &mut n) } != 0 || n == 0 {
            return String::new();
        }
        let mut buf = vec![0u8; n];
        // SAFETY: `buf` has the `n` bytes NVRTC reported (including the NUL).
        if unsafe { (self.api.nvrtcGetProgramLog)(self.prog, buf.as_mut_ptr().cast()) } != 0 {
            return String::new();
        }
        String::from_utf8_lossy(&buf[..n.saturating_sub(1)]).trim_end().to_string()
    }

    fn bytes(
        &self,
        size: unsafe extern "C" fn(Prog, *mut usize) -> c_int,
        get: unsafe extern "C" fn(Prog, *mut c_char) -> c_int,
    ) -> std::result::Result<Vec<u8>, String> {
        let mut n = 0usize;
        // SAFETY: valid program and out-pointer.
        let rc = unsafe { size(self.prog, &mut n) };
        if rc != 0 {
            return Err(self.api.err(rc));
        }
        let mut buf = vec![0u8; n];
        // SAFETY: `buf` has exactly the size NVRTC reported.
        let rc = unsafe { get(self.prog, buf.as_mut_ptr().cast()) };
        if rc != 0 {
            return Err(self.api.err(rc));
        }
        Ok(buf)
    }
}

fn cstring(s: &str, what: &str) -> std::result::Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
}

/// Compiles one program. `Err` carries the log (or the failing call's message).
pub(crate) fn compile(
    program_name: &str,
    source: &str,
    headers: &[(&str, &str)],
    options: &[String],
    name_exprs: &[String],
) -> Result<std::result::Result<Output, String>> {
    let a = api()?;
    crate::telemetry::record_nvrtc_program();
    Ok(compile_with(a, program_name, source, headers, options, name_exprs))
}

fn compile_with(
    a: &Api,
    program_name: &str,
    source: &str,
    headers: &[(&str, &str)],
    options: &[String],
    name_exprs: &[String],
) -> std::result::Result<Output, String> {
    let src = cstring(source, "source")?;
    let name = cstring(program_name, "program name")?;
    let htexts = headers.iter().map(|(_, t)| cstring(t, "header")).collect::<std::result::Result<Vec<_>, _>>()?;
    let hnames = headers.iter().map(|(n, _)| cstring(n, "header name")).collect::<std::result::Result<Vec<_>, _>>()?;
    let htext_ptrs: Vec<*const c_char> = htexts.iter().map(|c| c.as_ptr()).collect();
    let hname_ptrs: Vec<*const c_char> = hnames.iter().map(|c| c.as_ptr()).collect();
    let mut prog: Prog = std::ptr::null_mut::<c_void>().cast();
    // SAFETY: every pointer refers to a live NUL-terminated string owned above, the two header
    // arrays have `headers.len()` entries each, and `prog` is a valid out-pointer.
    let rc = unsafe {
        (a.nvrtcCreateProgram)(&mut prog, src.as_ptr(), name.as_ptr(), headers.len() as c_int, htext_ptrs.as_ptr(), hname_ptrs.as_ptr())
    };
    if rc != 0 {
        return Err(format!("nvrtcCreateProgram: {}", a.err(rc)));
    }
    let p = Program { api: a, prog };
    let exprs = name_exprs.iter().map(|e| cstring(e, "name expression")).collect::<std::result::Result<Vec<_>, _>>()?;
    for e in &exprs {
        // SAFETY: live program, NUL-terminated expression that outlives the program.
        let rc = unsafe { (a.nvrtcAddNameExpression)(p.prog, e.as_ptr()) };
        if rc != 0 {
            return Err(format!("nvrtcAddNameExpression({e:?}): {}", a.err(rc)));
        }
    }
    let opts = options.iter().map(|o| cstring(o, "option")).collect::<std::result::Result<Vec<_>, _>>()?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|c| c.as_ptr()).collect();
    // SAFETY: live program; `opt_ptrs` holds `opts.len()` pointers to live C strings.
    let rc = unsafe { (a.nvrtcCompileProgram)(p.prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
    let log = p.log();
    if rc != 0 {
        let msg = a.err(rc);
        return Err(if log.is_empty() { msg } else { format!("{msg}\n{log}") });
    }
    let mut lowered = Vec::with_capacity(exprs.len());
    for e in &exprs {
        let mut out: *const c_char = std::ptr::null();
        // SAFETY: live, compiled program; the expression was added before compiling; `out` is a
        // valid out-pointer. The returned string is owned by the program, copied before drop.
        let rc = unsafe { (a.nvrtcGetLoweredName)(p.prog, e.as_ptr(), &mut out) };
        if rc != 0 || out.is_null() {
            return Err(format!("nvrtcGetLoweredName({e:?}): {}", a.err(rc)));
        }
        // SAFETY: non-null NUL-terminated string owned by the live program.
        lowered.push(unsafe { CStr::from_ptr(out) }.to_string_lossy().into_owned());
    }
    let mut ptx = p.bytes(a.nvrtcGetPTXSize, a.nvrtcGetPTX)?;
    while ptx.last() == Some(&0) {
        ptx.pop();
    }
    let cubin = p.bytes(a.nvrtcGetCUBINSize, a.nvrtcGetCUBIN)?;
    if cubin.is_empty() {
        return Err("NVRTC produced no CUBIN (was a virtual compute_XY target requested?)".into());
    }
    Ok(Output { ptx: String::from_utf8_lossy(&ptx).into_owned(), cubin, lowered, log })
}
