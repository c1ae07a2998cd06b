//! The `weft-cni` binary, as a container runtime calls it: the command in
//! `CNI_COMMAND`, the network config on stdin, the result (or an error
//! object) on stdout, and nothing else on stdout.

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => weft_cni::run(&env, &stdin),
        Err(e) => Err(weft_cni::CniError::io(
            "cannot read network config from stdin",
            e.to_string(),
        )),
    };
    match outcome {
        Ok(Some(result)) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(error) => {
            weft_cni::log(&format!("error: {} ({})", error.msg, error.details));
            println!("{}", error.to_json(weft_cni::version_for_error(&stdin)));
            ExitCode::FAILURE
        }
    }
}
