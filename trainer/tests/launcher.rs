//! A binary built without feature `mpi`, started as one of several MPI processes, refuses to
//! train (N independent copies would each train the whole run into the same directory).
#![cfg(not(feature = "mpi"))]

use std::process::Command;

#[test]
fn a_binary_without_mpi_refuses_to_run_as_one_of_several_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    for (var, value) in [("OMPI_COMM_WORLD_SIZE", "2"), ("PMI_SIZE", "4")] {
        let out = Command::new(env!("CARGO_BIN_EXE_sc-trainer"))
            .args(["fit", "--data", "/no/such/data", "--iterations", "1"])
            .arg("--runs")
            .arg(tmp.path())
            .env(var, value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value}: it ran");
        assert!(
            err.contains(&format!("one of {value} MPI processes"))
                && err.contains("--features mpi"),
            "{var}={value}: {err}"
        );
        assert!(!tmp.path().join("runs").exists());
    }
    // One process of one is the single process (the data error comes through).
    let out = Command::new(env!("CARGO_BIN_EXE_sc-trainer"))
        .args(["fit", "--data", "/no/such/data", "--iterations", "1"])
        .arg("--runs")
        .arg(tmp.path())
        .env("OMPI_COMM_WORLD_SIZE", "1")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/data"));
}
