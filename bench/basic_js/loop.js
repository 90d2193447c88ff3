// bench/basic.py's dialog, as the old platform ran a .bas file: translated to JavaScript
// statement for statement (a FOR loop, IF ... ELSE, MOD as %, assignments) and wrapped in
// the async main the translator emitted around every dialog. `n` comes from the sandbox.
async function main() {
  let total = 0;
  for (let i = 1; i <= n; i++) {
    if (i % 3 === 0) {
      total = total + i * 2;
    } else {
      total = total - 1;
    }
  }
  return total;
}
main();
