//! Finding the MariaDB (or MySQL) programs on this machine.

use std::path::{Path, PathBuf};

/// Where distributions put server programs that may not be on a user's PATH.
const EXTRA_DIRS: [&str; 4] = ["/usr/sbin", "/usr/local/sbin", "/usr/libexec", "/usr/local/mysql/bin"];

#[derive(Debug, thiserror::Error)]
#[error("{wanted} not found on PATH or in /usr/sbin; install Debian's `mariadb-server` package (apt-get install mariadb-server), or run `scripts/setup`")]
pub struct NotFound {
    wanted: String,
}

/// The first of `names` found on PATH or in the usual server directories.
pub fn find(names: &[&str]) -> Result<PathBuf, NotFound> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).chain(EXTRA_DIRS.iter().map(PathBuf::from)).collect();
    for name in names {
        for dir in &dirs {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(NotFound { wanted: names.join(" or ") })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub fn server() -> Result<PathBuf, NotFound> {
    find(&["mariadbd", "mysqld"])
}

pub fn install_db() -> Result<PathBuf, NotFound> {
    find(&["mariadb-install-db", "mysql_install_db"])
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_program_names_the_package() {
        let e = super::find(&["surely-not-a-program-here"]).unwrap_err().to_string();
        assert!(e.contains("mariadb-server"), "{e}");
    }
}
