/** A tensor shape as error messages print it: `[4,64,128,3]`. The one formatter of shapes in the project. */
export function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(',')}]`;
}
