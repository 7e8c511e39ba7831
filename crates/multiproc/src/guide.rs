//! Python's `multiprocessing`, name by name, and where it is here.
//!
//! | Python | multiproc | notes |
//! |---|---|---|
//! | `Process(target=f, args=(a,))` | [`Process::new(f, a)`](crate::Process::new) | `f: fn(A) -> R`; several arguments are a tuple |
//! | `p.name`, `p.daemon` | [`Process::name`](crate::Process::name), [`Process::daemon`](crate::Process::daemon) (builder), [`set_daemon`](crate::Process::set_daemon) | |
//! | `p.start()`, `p.join()`, `p.join(t)` | [`start`](crate::Process::start), [`join`](crate::Process::join), [`join_timeout`](crate::Process::join_timeout) | |
//! | *(none)* | [`join_result`](crate::Process::join_result) | the target's return value, or why there is none |
//! | `p.is_alive()`, `p.exitcode`, `p.pid` | [`is_alive`](crate::Process::is_alive), [`exitcode`](crate::Process::exitcode), [`pid`](crate::Process::pid) | |
//! | `p.terminate()`, `p.kill()`, `p.close()` | [`terminate`](crate::Process::terminate), [`kill`](crate::Process::kill), [`close`](crate::Process::close) | signals go through a pidfd |
//! | `p.sentinel` | [`sentinel`](crate::Process::sentinel) | a pidfd |
//! | `multiprocessing.connection.wait` | [`wait`](crate::wait()) | returns the indices of the ready objects |
//! | `Pipe(duplex)` | [`pipe::<T>(duplex)`](crate::pipe()) | typed ends, [`Connection<T>`](crate::Connection) |
//! | `conn.send(obj)`, `conn.recv()` | [`send`](crate::Connection::send), [`recv`](crate::Connection::recv), [`recv_timeout`](crate::Connection::recv_timeout) | default codec postcard; [`Pickle`](crate::codec::Pickle) for CPython peers |
//! | `send_bytes`, `recv_bytes`, `recv_bytes_into` | [`send_bytes`](crate::Connection::send_bytes), [`send_bytes_range`](crate::Connection::send_bytes_range), [`recv_bytes`](crate::Connection::recv_bytes), [`recv_bytes_max`](crate::Connection::recv_bytes_max), [`recv_bytes_into`](crate::Connection::recv_bytes_into) | [`send_bytes_many`](crate::Connection::send_bytes_many) and [`send_many`](crate::Connection::send_many) send many messages in few writes; [`recv_bytes_many`](crate::Connection::recv_bytes_many) receives every message already read, without a copy |
//! | `conn.poll(t)` | [`poll`](crate::Connection::poll) | `None` waits for ever |
//! | `Listener(address, authkey=k)` | [`Listener::builder`](crate::connection::Listener::builder) | the program's key by default |
//! | `Client(address, authkey=k)` | [`Client::new`](crate::connection::Client::new) | the handshake has a timeout |
//! | `AuthenticationError`, `BufferTooShort`, `EOFError` | [`ConnectionError`](crate::connection::ConnectionError) | |
//! | `current_process()`, `parent_process()` | [`current_process`](crate::current_process), [`parent_process`](crate::parent_process) | |
//! | `active_children()` | [`active_children`](crate::active_children) | |
//! | `cpu_count()` | [`cpu_count`](crate::cpu_count) | honours affinity and cgroup quota |
//! | `get_context(m)` | [`get_context`](crate::get_context) | |
//! | `set_start_method(m)`, `(m, force=True)` | [`set_start_method`](crate::set_start_method), [`set_start_method_force`](crate::set_start_method_force) | |
//! | `get_start_method()`, `get_all_start_methods()` | [`get_start_method`](crate::get_start_method), [`get_all_start_methods`](crate::get_all_start_methods) | |
//! | `set_executable(path)` | [`Context::set_executable`](crate::Context::set_executable) | must be a build of the same program |
//! | `if __name__ == '__main__':` | [`#[multiproc::main]`](crate::main) or [`init()`](crate::init) | the start-up hook |
//! | `multiprocessing.forkserver.ensure_running()` | [`ensure_forkserver`](crate::ensure_forkserver) | |
//! | `shared_memory.SharedMemory` | [`SharedMemory`](crate::SharedMemory) | tracked by default: unlinked when the program's last user lets go |
//! | `shared_memory.ShareableList` | [`ShareableList`](crate::ShareableList) | CPython's layout |
//! | `Value`, `RawValue` | [`Value`](crate::Value), [`RawValue`](crate::RawValue) | atomics for numbers: [`Value::fetch_add`](crate::Value::fetch_add) |
//! | `Array`, `RawArray` | [`Array`](crate::Array), [`RawArray`](crate::RawArray) | any [`Pod`](crate::Pod) element |
//! | `Lock()`, `RLock()` | [`Lock`](crate::Lock), [`RLock`](crate::RLock) | guards; a dead holder is reported ([`AcquireError::OwnerDied`](crate::AcquireError)) |
//! | `Semaphore`, `BoundedSemaphore` | [`Semaphore`](crate::Semaphore), [`BoundedSemaphore`](crate::BoundedSemaphore) | |
//! | `Condition`, `Event`, `Barrier` | [`Condition`](crate::Condition), [`Event`](crate::Event), [`Barrier`](crate::Barrier) | |
//! | `Queue(maxsize)` | [`Queue::new`](crate::Queue::new), [`Queue::builder`](crate::Queue::builder) | any serde item; no feeder thread, so no `join_thread` / `cancel_join_thread` |
//! | `q.put(obj, block, timeout)` | [`put`](crate::Queue::put), [`try_put`](crate::Queue::try_put), [`put_timeout`](crate::Queue::put_timeout), [`put_nowait`](crate::Queue::put_nowait) | [`PutError::Full`](crate::PutError::Full) hands the item back |
//! | `q.get(block, timeout)` | [`get`](crate::Queue::get), [`try_get`](crate::Queue::try_get), [`get_timeout`](crate::Queue::get_timeout), [`get_nowait`](crate::Queue::get_nowait) | [`GetError::Empty`](crate::GetError::Empty) |
//! | `qsize`, `empty`, `full`, `close` | [`qsize`](crate::Queue::qsize), [`empty`](crate::Queue::empty), [`full`](crate::Queue::full), [`close`](crate::Queue::close) | |
//! | `JoinableQueue`: `task_done`, `join` | [`JoinableQueue`](crate::JoinableQueue): [`task_done`](crate::JoinableQueue::task_done), [`join`](crate::JoinableQueue::join), [`join_timeout`](crate::JoinableQueue::join_timeout) | |
//! | `SimpleQueue` | [`SimpleQueue`](crate::SimpleQueue) | |
//! | `Pool(processes, initializer, initargs, maxtasksperchild, context)` | [`Pool::new`](crate::Pool::new), [`Pool::builder`](crate::Pool::builder) | [`initializer`](crate::PoolBuilder::initializer), [`maxtasksperchild`](crate::PoolBuilder::maxtasksperchild), [`context`](crate::PoolBuilder::context) |
//! | `pool.apply(f, args)`, `apply_async(f, args, callback, error_callback)` | [`apply`](crate::Pool::apply), [`apply_async`](crate::Pool::apply_async), [`apply_async_with`](crate::Pool::apply_async_with) | callbacks get `&R` / `&TaskError` |
//! | `pool.map(f, it, chunksize)`, `map_async` | [`map`](crate::Pool::map), [`map_with`](crate::Pool::map_with) ([`MapOptions`](crate::MapOptions)), [`map_async`](crate::Pool::map_async) | the error of the first failed item |
//! | `pool.starmap(f, pairs)`, `starmap_async` | [`starmap`](crate::Pool::starmap), [`starmap_async`](crate::Pool::starmap_async) | two-argument functions |
//! | `pool.imap(f, it, chunksize)`, `imap_unordered` | [`imap`](crate::Pool::imap), [`imap_unordered`](crate::Pool::imap_unordered), [`imap_with`](crate::Pool::imap_with) | lazy input; items are `Result`s |
//! | `pool.close()`, `terminate()`, `join()` | [`close`](crate::Pool::close), [`terminate`](crate::Pool::terminate), [`join`](crate::Pool::join) | dropping a pool terminates it |
//! | `AsyncResult.get(t)`, `wait`, `ready`, `successful` | [`AsyncResult`](crate::AsyncResult): [`get`](crate::AsyncResult::get), [`get_timeout`](crate::AsyncResult::get_timeout), [`wait`](crate::AsyncResult::wait), [`ready`](crate::AsyncResult::ready), [`successful`](crate::AsyncResult::successful) | also a `Future` |
//! | `ProcessPoolExecutor.submit`, `shutdown(wait, cancel_futures)` | [`Pool::submit`](crate::Pool::submit), [`Pool::shutdown`](crate::Pool::shutdown) | one pool type for both styles |
//! | `Future.cancel()`, `concurrent.futures.wait`, `as_completed` | [`AsyncResult::cancel`](crate::AsyncResult::cancel), [`pool::wait`](crate::pool::wait()), [`pool::as_completed`](crate::pool::as_completed()) | a running task can be cancelled too |
//! | `ProcessError`, `TimeoutError` | [`ProcessError`](crate::ProcessError), [`ChildError`](crate::ChildError) | |
