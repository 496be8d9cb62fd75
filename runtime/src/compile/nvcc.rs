//! Optional nvcc backend (`KILN_COMPILER=nvcc`): the same flags, `nvcc -ptx` and `nvcc -cubin` in
//! a private temp directory, a timeout, stderr captured into the error.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::source::KernelSpec;

pub(crate) struct Output {
    pub ptx: String,
    pub cubin: Vec<u8>,
    pub lowered: String,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// NVRTC spellings → nvcc spellings (the meaning is identical).
fn nvcc_options(options: &[String]) -> Vec<String> {
    options
        .iter()
        .map(|o| match o.strip_prefix("--gpu-architecture=sm_") {
            Some(a) => format!("-gencode=arch=compute_{a},code=sm_{a}"),
            None => o.clone(),
        })
        .collect()
}

fn run(cmd: &mut Command, dir: &Path, timeout: Duration) -> std::result::Result<(), String> {
    let err_path = dir.join("stderr.txt");
    let err_file = fs::File::create(&err_path).map_err(|e| e.to_string())?;
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err_file).spawn().map_err(|e| format!("cannot start nvcc: {e}"))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("nvcc timed out after {} s", timeout.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    if status.success() { Ok(()) } else { Err(format!("nvcc exited with {status}:\n{stderr}")) }
}

/// The kernel entry for `expr` among the PTX entries: the only one, or the only one whose
/// mangled name carries the template's length-prefixed identifier.
fn pick_entry(entries: &[String], expr: &str) -> Option<String> {
    if entries.len() == 1 {
        return entries.first().cloned();
    }
    let base = expr.split('<').next()?.rsplit("::").next()?.trim();
    let needle = format!("{}{}", base.len(), base);
    let hits: Vec<&String> = entries.iter().filter(|e| e.contains(&needle)).collect();
    (hits.len() == 1).then(|| hits[0].clone())
}

pub(crate) fn compile(
    nvcc: &Path,
    spec: &KernelSpec,
    headers: &[(&str, &str)],
    options: &[String],
    include: &Path,
    timeout: Duration,
) -> Result<std::result::Result<Output, String>> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = TempDir(std::env::temp_dir().join(format!("kiln-nvcc-{}-{nanos}", std::process::id())));
    let inner = || -> std::result::Result<Output, String> {
        let inc = dir.0.join("inc");
        for (name, text) in headers {
            let p = inc.join(name);
            fs::create_dir_all(p.parent().ok_or("bad header name")?).map_err(|e| e.to_string())?;
            fs::write(&p, text).map_err(|e| e.to_string())?;
        }
        fs::create_dir_all(&inc).map_err(|e| e.to_string())?;
        // Host code that takes the kernel's address makes nvcc instantiate the template for the
        // device, as a name expression does for NVRTC.
        let src = format!(
            "{}\n// kiln: instantiate the requested kernel\nstatic void* const kiln_instance_0 = (void*)&{};\n",
            spec.source().text,
            spec.expr()
        );
        let cu = dir.0.join("kernel.cu");
        fs::write(&cu, src).map_err(|e| e.to_string())?;
        let opts = nvcc_options(options);
        let ptx_path = dir.0.join("kernel.ptx");
        let cubin_path = dir.0.join("kernel.cubin");
        for (flag, out) in [("-ptx", &ptx_path), ("-cubin", &cubin_path)] {
            let mut cmd = Command::new(nvcc);
            cmd.arg(flag).args(&opts).arg("-I").arg(&inc).arg("-I").arg(include).arg("-o").arg(out).arg(&cu);
            run(&mut cmd, &dir.0, timeout)?;
        }
        let ptx = fs::read_to_string(&ptx_path).map_err(|e| e.to_string())?;
        let cubin = fs::read(&cubin_path).map_err(|e| e.to_string())?;
        let entries = crate::ptx::entries(&ptx);
        let lowered =
            pick_entry(&entries, spec.expr()).ok_or_else(|| format!("cannot tell which PTX entry is {} among {entries:?}", spec.expr()))?;
        Ok(Output { ptx, cubin, lowered })
    };
    Ok(inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_entries() {
        assert_eq!(
            nvcc_options(&["--gpu-architecture=sm_90a".into(), "--ftz=true".into()]),
            ["-gencode=arch=compute_90a,code=sm_90a", "--ftz=true"]
        );
        let e = vec!["_Z11act_and_mulI6__halfEvv".to_string(), "_Z5otherv".to_string()];
        assert_eq!(pick_entry(&e, "act_and_mul<__half>").as_deref(), Some("_Z11act_and_mulI6__halfEvv"));
        assert_eq!(pick_entry(&e[1..], "whatever<1>").as_deref(), Some("_Z5otherv"));
        assert_eq!(pick_entry(&e, "missing<1>"), None);
    }
}
