//! The one declaration of a configuration section: [`section!`] takes each
//! key once (its documentation, name, type, default, and the rare flag of
//! another name) and makes of it
//!
//! - the section's struct, as the TOML file spells it (serde; unknown keys
//!   refused, missing ones defaulted), and its `Default`;
//! - the section's flags (a `clap::Args` struct flattened into `Args`),
//!   one `Option` per key with the key as its id (`spool.fsync`); the long
//!   name, the variable, the placeholder and the default in `--help` are
//!   set from that id and the type in one place (`help.rs`);
//! - `apply`, which lays the flags given over the file's values (a value
//!   given replaces the file's, unless the key declares another rule);
//! - `keys`, which tells `--help` each key's default and placeholder.
//!
//! A key with no flag (a table of the file, such as `consumers.groups`) is
//! declared in the section's `file_only` block.

use super::values::FlagText;

/// The rule of a switch (`--repair`): given, it turns its key on; absent
/// (clap then reports `false`), or `false` in its variable, it leaves the
/// file's value alone.
pub fn switch_on(value: &mut bool, given: &Option<bool>) {
    if *given == Some(true) {
        *value = true;
    }
}

/// The long name of a flag until `help.rs` names it from its key (a flag
/// declared with none would be taken by clap's derive for a positional
/// argument). A key may declare its own (`#[arg(long = "repair")]`).
pub const UNNAMED: &str = "unnamed";

/// What `--help` says of a key beyond its documentation.
#[derive(Debug, Clone)]
pub struct KeyHelp {
    /// `section.key`: the flag's id.
    pub id: &'static str,
    /// The default, as one would write it after the flag.
    pub default: String,
    /// The flag's placeholder (`SIZE`).
    pub placeholder: &'static str,
    /// Several values, comma-separated.
    pub list: bool,
}

impl KeyHelp {
    pub fn of<T: FlagText>(id: &'static str, default: &T) -> KeyHelp {
        KeyHelp {
            id,
            default: default.flag_text(),
            placeholder: T::PLACEHOLDER,
            list: T::LIST,
        }
    }
}

/// Lays a flag (or its variable) over its key: a value given replaces
/// the file's, nothing given leaves it, unless the key declares its own
/// rule (`#[merge = switch_on]`).
macro_rules! lay_over {
    ($given:expr, $value:expr) => {
        if let Some(v) = &$given {
            $value = v.clone();
        }
    };
    ($given:expr, $value:expr, $merge:path) => {
        $merge(&mut $value, &$given)
    };
}
pub(super) use lay_over;

/// A table of the file: its struct (serde: unknown keys refused, missing
/// ones defaulted) and its `Default`, each key written once.
macro_rules! file_table {
    (
        $(#[doc = $sdoc:literal])*
        $Table:ident {
            $(
                $(#[doc = $doc:literal])*
                $key:ident : $ty:ty = $default:expr
            ),* $(,)?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $Table {
            $(
                $(#[doc = $doc])*
                pub $key: $ty,
            )*
        }

        impl Default for $Table {
            fn default() -> Self {
                $Table {
                    $($key: $default,)*
                }
            }
        }
    };
}
pub(super) use file_table;

/// Declares a section (see the module's documentation):
///
/// ```text
/// section! {
///     /// Doc of the section.
///     [spool] SpoolSection, SpoolFlags, "Spool: the durable log" {
///         /// One line for `-h`.
///         ///
///         /// More for `--help` and the reader of the code.
///         dir: PathBuf = PathBuf::from("./sluice-data"),
///         #[arg(long = "repair", action = clap::ArgAction::SetTrue)]
///         #[merge = switch_on]           // not "a value given replaces"
///         repair: bool = false,
///     }
///     file_only {
///         groups: Vec<GroupEntry> = Vec::new(),
///     }
/// }
/// ```
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        [$section:ident] $Section:ident, $Flags:ident, $heading:literal {
            $(
                $(#[doc = $doc:literal])*
                $(#[arg($($arg:tt)*)])*
                $(#[merge = $merge:path])?
                $key:ident : $ty:ty = $default:expr
            ),* $(,)?
        }
        $(file_only {
            $(
                $(#[doc = $fdoc:literal])*
                $fkey:ident : $fty:ty = $fdefault:expr
            ),* $(,)?
        })?
    ) => {
        $crate::config::declare::file_table! {
            $(#[doc = $sdoc])*
            $Section {
                $($(#[doc = $doc])* $key: $ty = $default,)*
                $($($(#[doc = $fdoc])* $fkey: $fty = $fdefault,)*)?
            }
        }

        #[doc = concat!("The flags of `[", stringify!($section), "]`: each key's, `None` when not given.")]
        #[derive(Debug, Clone, Default, clap::Args)]
        #[command(next_help_heading = concat!($heading, " [", stringify!($section), "]"))]
        pub struct $Flags {
            $(
                $(#[doc = $doc])*
                #[arg(
                    id = concat!(stringify!($section), ".", stringify!($key)),
                    long = $crate::config::declare::UNNAMED,
                )]
                $(#[arg($($arg)*)])*
                pub $key: Option<$ty>,
            )*
        }

        impl $Section {
            /// Lays the flags given (and their variables) over these values.
            pub fn apply(&mut self, flags: &$Flags) {
                $(
                    $crate::config::declare::lay_over!(flags.$key, self.$key $(, $merge)?);
                )*
            }

            /// Each key that has a flag, with its default, for `--help`.
            pub fn keys() -> Vec<$crate::config::declare::KeyHelp> {
                let defaults = Self::default();
                vec![$(
                    $crate::config::declare::KeyHelp::of(
                        concat!(stringify!($section), ".", stringify!($key)),
                        &defaults.$key,
                    ),
                )*]
            }
        }
    };
}
pub(super) use section;
