//! S23 `spawn_globals` (a CPython trap): under spawn (and forkserver) a child starts from a
//! fresh program image, so a global the parent filled is empty there. The fix: pass the
//! value as the child's argument. Under fork the child gets a copy of the global, and a
//! change it makes is not seen by the parent: shared state needs a shared object (a Value
//! or a Manager).

use std::sync::Mutex;

use multiproc::get_context;
use serde::{Deserialize, Serialize};

/// Something slow to build that the seed loads once and keeps in a global.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PluginRegistry {
    funcs: Vec<String>,
}

impl PluginRegistry {
    fn load() -> Self {
        Self {
            funcs: vec!["func0".to_owned(), "func1".to_owned()],
        }
    }

    fn process(&self, i: usize) -> String {
        format!("{}: {i}", self.funcs[i % self.funcs.len()])
    }

    fn process_all(&self) -> Vec<String> {
        (0..10).map(|i| self.process(i)).collect()
    }
}

static PLUGIN_REGISTRY: Mutex<Option<PluginRegistry>> = Mutex::new(None);

fn registry() -> Option<PluginRegistry> {
    PLUGIN_REGISTRY.lock().unwrap().clone()
}

/// The trap: relies on the global.
fn use_global(_: ()) -> Result<Vec<String>, String> {
    registry()
        .map(|r| r.process_all())
        .ok_or_else(|| "the plugin registry is None in this child".to_owned())
}

/// The fix: the registry comes as the argument.
fn use_arg(registry: PluginRegistry) -> Vec<String> {
    registry.process_all()
}

/// Changes the child's copy of the global; returns how many plugins it now has.
fn add_plugin(_: ()) -> usize {
    let mut global = PLUGIN_REGISTRY.lock().unwrap();
    let registry = global.as_mut().expect("a fork child has the parent's copy");
    registry.funcs.push("func2".to_owned());
    registry.funcs.len()
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    *PLUGIN_REGISTRY.lock().unwrap() = Some(PluginRegistry::load());
    println!(
        "plugin loaded in the parent: {:?}",
        registry().map(|r| r.funcs)
    );

    for method in ["spawn", "forkserver", "fork"] {
        let ctx = get_context(method)?;
        let mut p = ctx.process(use_global, ());
        p.start()?;
        match p.join_result()? {
            Ok(list) => println!("{method}, global: {list:?}"),
            Err(e) => println!("{method}, global: error: {e}"),
        }
    }

    let registry_arg = registry().expect("loaded above");
    for method in ["spawn", "forkserver"] {
        let mut p = get_context(method)?.process(use_arg, registry_arg.clone());
        p.start()?;
        println!("{method}, argument: {:?}", p.join_result()?);
    }

    let mut p = get_context("fork")?.process(add_plugin, ());
    p.start()?;
    println!(
        "fork child added a plugin: the child has {}",
        p.join_result()?
    );
    let parent_len = registry().map_or(0, |r| r.funcs.len());
    println!("the parent still has {parent_len}: a fork child's change stays in the child");
    Ok(())
}
