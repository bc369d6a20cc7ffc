// Upload one scan from a file input to the viewer in pieces, so no single message is large.
// The server checks the declared size before any piece is sent and every piece as it arrives;
// it answers false to stop (its message is already on the page, and it empties the input).
window.pprUpload = async function pprUpload(input) {
  const file = input && input.files && input.files[0];
  if (!file) {
    return;
  }
  const pieceBytes = 4 * 1024 * 1024;
  if (!(await window.trame.trigger("ppr_upload_begin", [file.name, file.size]))) {
    return;
  }
  for (let offset = 0; offset < file.size; offset += pieceBytes) {
    const piece = new File([file.slice(offset, offset + pieceBytes)], file.name);
    if (!(await window.trame.trigger("ppr_upload_piece", [piece, offset]))) {
      return;
    }
  }
  await window.trame.trigger("ppr_upload_end", []);
};
